"""Tenants, their quotas, and their API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints, field_validator

from agentcell.protocol.common import ReplyModel, WireModel

TenantName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
KEY_SCOPES = (
    "sandboxes:read",
    "sandboxes:write",
    "functions:read",
    "functions:write",
    "sessions:read",
    "sessions:write",
    "invoke",
    "usage:read",
    "metrics:read",
    "admin",
)


class TenantQuotas(WireModel):
    """Limits of one tenant; null: unlimited."""

    max_sessions: int | None = Field(default=None, ge=0, le=10_000_000)
    max_instances: int | None = Field(default=None, ge=0, le=1_000_000)
    max_sandboxes: int | None = Field(default=None, ge=0, le=1_000_000)
    max_cpu: float | None = Field(
        default=None, ge=0, le=1_000_000, description="cores, summed over running work"
    )
    max_memory_mb: int | None = Field(default=None, ge=0, le=1 << 40)
    max_storage_mb: int | None = Field(default=None, ge=0, le=1 << 40, description="stored workspace bytes")
    max_functions: int | None = Field(default=None, ge=0, le=1_000_000, description="functions deployed")
    max_code_mb: int | None = Field(
        default=None,
        ge=0,
        le=1 << 40,
        description="function code on the node's disk, every version kept (until no instance runs it)",
    )
    max_rps: float | None = Field(default=None, ge=0.01, le=1_000_000, description="requests per second")


class TenantCreate(WireModel):
    name: TenantName
    quotas: TenantQuotas = Field(default_factory=TenantQuotas)


class TenantUpdate(WireModel):
    quotas: TenantQuotas = Field(
        description="the quotas named change (null: unlimited); those left out keep their value"
    )


class TenantInfo(ReplyModel):
    name: str
    created_at: datetime
    quotas: TenantQuotas


class TenantList(ReplyModel):
    tenants: list[TenantInfo]


class KeyCreate(WireModel):
    scopes: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=len(KEY_SCOPES) + 1)
    name: Annotated[str, StringConstraints(max_length=128)] = ""

    @field_validator("scopes")
    @classmethod
    def _known(cls, scopes: list[str]) -> list[str]:
        unknown = sorted(set(scopes) - {*KEY_SCOPES, "*"})
        if unknown:
            raise ValueError(f"unknown scopes {unknown}; choose from {', '.join(KEY_SCOPES)} or *")
        return sorted(set(scopes))


class KeyInfo(ReplyModel):
    id: str
    tenant: str
    scopes: list[str]
    name: str
    created_at: datetime
    revoked_at: datetime | None = None


class KeyCreated(KeyInfo):
    key: str = Field(description="shown this once; only its hash is kept")


class KeyList(ReplyModel):
    keys: list[KeyInfo]
