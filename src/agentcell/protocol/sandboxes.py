"""Sandbox lifecycle: create, describe, renew."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from agentcell.protocol.common import NoNul, ReplyModel, WireModel
from agentcell.protocol.egress import NetworkPolicy

EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256)]
EnvValue = Annotated[str, StringConstraints(max_length=32768), NoNul]
MetaKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,64}$")]
MetaValue = Annotated[str, StringConstraints(max_length=512)]
TemplateName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]

MAX_TIMEOUT_S = 7 * 24 * 3600


MIN_KERNEL_MEMORY_MB = 128


MIN_MEMORY_MB = 32
MIN_DISK_MB = 16


class SandboxCreate(WireModel):
    template: TemplateName = "base"
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, max_length=256)
    metadata: dict[MetaKey, MetaValue] = Field(default_factory=dict, max_length=64)
    cpu: float = Field(
        default=1.0, ge=0.01, le=64, description="CPU cores (a quota, fractions down to 0.01 allowed)"
    )
    memory_mb: int = Field(default=512, ge=MIN_MEMORY_MB, le=262144)
    disk_mb: int = Field(
        default=1024,
        ge=MIN_DISK_MB,
        le=1048576,
        description="workspace + writable layer size; held in RAM, so at most memory_mb takes effect",
    )
    timeout_s: int = Field(default=300, ge=1, le=MAX_TIMEOUT_S, description="seconds until the sandbox ends")
    code_kernel: bool = Field(
        default=False, description="start the default Python code kernel before the sandbox is returned"
    )
    network: NetworkPolicy = Field(
        default_factory=NetworkPolicy, description="egress: none (default), allowlist or open"
    )
    on_timeout: Literal["kill", "pause"] = Field(
        default="kill", description="at its timeout the sandbox ends (kill) or is paused (/home/user kept)"
    )

    @model_validator(mode="after")
    def _kernel_fits(self) -> SandboxCreate:
        if self.code_kernel and self.memory_mb < MIN_KERNEL_MEMORY_MB:
            raise ValueError(
                f"code_kernel needs memory_mb of at least {MIN_KERNEL_MEMORY_MB} (a Python kernel "
                f"uses about 60 MB), got {self.memory_mb}"
            )
        return self


class SandboxTimeout(WireModel):
    timeout_s: int = Field(ge=1, le=MAX_TIMEOUT_S)


class SandboxResume(WireModel):
    timeout_s: int | None = Field(
        default=None, ge=1, le=MAX_TIMEOUT_S, description="its new timeout (default: its timeout at create)"
    )


SandboxState = Literal["running", "stopping", "ended", "paused"]
"""`paused`: no instance; its /home/user is in object storage until it is resumed or killed."""


class SandboxInfo(ReplyModel):
    id: str
    template: str
    state: SandboxState
    env_keys: list[str]
    metadata: dict[str, str]
    cpu: float
    memory_mb: int
    disk_mb: int
    network: NetworkPolicy = Field(default_factory=NetworkPolicy)
    created_at: datetime
    expires_at: datetime


class SandboxList(ReplyModel):
    sandboxes: list[SandboxInfo]
