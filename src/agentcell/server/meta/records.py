"""The durable records: what survives a server restart. Plain dataclasses; JSON for nested config."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class FunctionRecord:
    name: str
    version: int
    config_json: str
    code_dir: str
    created_at: float
    updated_at: float


@dataclass(slots=True)
class SessionRecord:
    id: str
    function: str
    key: str
    version: int
    instance_id: str | None
    state: str
    end_reason: str | None
    created_at: float
    last_active_at: float
    expires_at: float
    ttl_s: int
    idle_timeout_s: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class InstanceRecord:
    id: str
    function: str
    version: int
    state: str
    created_at: float
