"""Functions (deployable units) and their session policy, as they travel on the wire."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from agentcell.protocol.common import ReplyModel, WireModel
from agentcell.protocol.sandboxes import EnvName, MetaKey, MetaValue

FunctionName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$", to_lower=True)]
AffinityKind = Literal["header", "cookie", "mcp", "none"]

DEFAULT_SESSION_HEADER = "x-agentcell-session-id"
DEFAULT_SESSION_COOKIE = "agentcell_session"
DAY_S = 24 * 3600


class Affinity(WireModel):
    kind: AffinityKind = "header"
    header: HeaderName = DEFAULT_SESSION_HEADER
    cookie: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = DEFAULT_SESSION_COOKIE


class Hook(WireModel):
    """A command run inside the instance, killed at its deadline."""

    cmd: Annotated[str, StringConstraints(min_length=1, max_length=65536)]
    timeout_s: float = Field(default=30, gt=0, le=3600)


class FunctionConfig(WireModel):
    cmd: Annotated[str, StringConstraints(min_length=1, max_length=65536)] = Field(
        description="serves HTTP on $PORT inside the instance; run by bash -c in /code"
    )
    port: int = Field(default=8080, ge=1, le=65535, description="the value of $PORT")
    env: dict[EnvName, Annotated[str, StringConstraints(max_length=32768)]] = Field(
        default_factory=dict, max_length=256
    )
    cpu: float = Field(default=1.0, gt=0, le=64)
    memory_mb: int = Field(default=512, ge=32, le=262144)
    disk_mb: int = Field(default=1024, ge=16, le=1048576)
    affinity: Affinity = Field(default_factory=Affinity)
    sessions_per_instance: int = Field(default=1, ge=1, le=200, description="1: exclusive")
    session_ttl_s: int = Field(default=6 * 3600, ge=1, le=30 * DAY_S)
    idle_timeout_s: int = Field(default=900, ge=1, le=30 * DAY_S)
    disable_session_id_reuse: bool = False
    min_warm: int = Field(default=0, ge=0, le=1000)
    max_instances: int = Field(default=100, ge=1, le=10000)
    concurrency_per_instance: int = Field(default=100, ge=1, le=10000)
    ready_timeout_s: float = Field(
        default=30, gt=0, le=600, description="how long the server may take to listen"
    )
    request_timeout_s: float = Field(default=300, gt=0, le=86400)
    initialize: Hook | None = None
    pre_stop: Hook | None = None
    metadata: dict[MetaKey, MetaValue] = Field(default_factory=dict, max_length=64)

    @model_validator(mode="after")
    def _warm_fits(self) -> FunctionConfig:
        if self.min_warm > self.max_instances:
            raise ValueError(
                f"min_warm ({self.min_warm}) must not exceed max_instances ({self.max_instances})"
            )
        return self


class FunctionInfo(ReplyModel):
    name: str
    version: int
    config: FunctionConfig
    created_at: datetime
    updated_at: datetime
    url_path: str
    instances: int = 0
    warm_instances: int = Field(default=0, description="ready, with no session yet")
    sessions: int = 0


class FunctionList(ReplyModel):
    functions: list[FunctionInfo]
