"""Sandbox lifecycle: create, describe, renew."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from agentcell.protocol.common import NoNul, ReplyModel, WireModel
from agentcell.protocol.egress import NetworkPolicy

EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256)]
EnvValue = Annotated[str, StringConstraints(max_length=32768), NoNul]
MetaKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/-]{1,64}$")]
MetaValue = Annotated[str, StringConstraints(max_length=512)]
TemplateName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
SnapshotId = Annotated[str, StringConstraints(max_length=64)]
SNAPSHOT_ID_PREFIX = "snap_"
MAX_FORKS = 20
"""sandboxes one fork starts at most"""

MAX_TIMEOUT_S = 7 * 24 * 3600
PORT_PLACEHOLDER = "${PORT}"
PortsHost = Annotated[str, StringConstraints(min_length=1, max_length=260)]
_PORTS_HOST = re.compile(r"(?:[A-Za-z0-9.\-:\[\]]|\$\{PORT\})+")
"""a Host header value: a name or address, an optional port, `${PORT}` anywhere for the port"""
AUTO_RESUME_MIN_TIMEOUT_S = 300
"""a sandbox resumed by work reaching it runs at least this long (E2B's five minutes), else its own
timeout: the clock starts at the resume"""
MAX_SANDBOX_PAGE = 100
"""the most sandboxes one page of `GET /v1/sandboxes` holds (and its default `limit`)"""


MIN_KERNEL_MEMORY_MB = 128


MIN_MEMORY_MB = 32
MIN_DISK_MB = 16

PortsAccess = Literal["public", "private"]
"""Who reaches servers listening in a sandbox through the gateway's `{port}-{id}.{domain}` hosts:
anyone who knows the host (public), or only requests with the sandbox's `traffic_token` in the
`e2b-traffic-access-token` header (private; E2B's `allowPublicTraffic: false`)."""


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
    auto_resume: bool = Field(
        default=False,
        description="resume the sandbox when paused, once work reaches it: a command, code, a file "
        "operation or a request to one of its ports (its timeout then at least "
        "AUTO_RESUME_MIN_TIMEOUT_S); needs on_timeout 'pause'",
    )
    ports: PortsAccess = Field(
        default="public",
        description="public: its ports' hosts answer anyone; private: only requests carrying its "
        "traffic_token (in the create answer) in the e2b-traffic-access-token header",
    )
    ports_host: PortsHost | None = Field(
        default=None,
        description="the Host header requests to its ports arrive with, in place of the gateway's "
        "{port}-{id}.{domain} (which X-Forwarded-Host keeps); ${PORT} is the port: "
        "'localhost:${PORT}' satisfies dev servers that accept only their own name",
    )
    snapshot: SnapshotId | None = Field(
        default=None,
        description="start from this snapshot (its id, snap_…): its template, resources, env and "
        "network and its /home/user files; fields given here replace the snapshot's (env is "
        "merged over it; ports are private when either asks). Not with template",
    )

    @model_validator(mode="after")
    def _one_origin(self) -> SandboxCreate:
        if self.snapshot is None:
            return self
        if not self.snapshot.startswith(SNAPSHOT_ID_PREFIX):
            raise ValueError(f"snapshot must be a snapshot id ({SNAPSHOT_ID_PREFIX}…), got {self.snapshot!r}")
        if "template" in self.model_fields_set:
            raise ValueError(
                "give template or snapshot, not both: a sandbox started from a snapshot runs the "
                "template of the sandbox the snapshot was taken of"
            )
        return self

    @field_validator("ports_host")
    @classmethod
    def _a_host(cls, host: str | None) -> str | None:
        if host is not None and not _PORTS_HOST.fullmatch(host):
            raise ValueError(
                "ports_host is a Host header: a name or address with an optional :port, and "
                f"{PORT_PLACEHOLDER} for the port (as 'localhost:{PORT_PLACEHOLDER}'), got {host[:80]!r}"
            )
        return host

    @model_validator(mode="after")
    def _resumes_only_if_paused(self) -> SandboxCreate:
        if self.auto_resume and self.on_timeout != "pause":
            raise ValueError(
                "auto_resume needs on_timeout 'pause': a sandbox that is killed at its timeout "
                "has nothing to resume"
            )
        return self

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
    ports: PortsAccess = "public"
    ports_host: str | None = None
    on_timeout: Literal["kill", "pause"] = "kill"
    auto_resume: bool = False
    traffic_token: str | None = Field(
        default=None,
        description="a private sandbox's token for its ports, to keys that may write to it (create, "
        "get, resume); a new one after a server restart",
    )
    created_at: datetime
    expires_at: datetime


class SandboxList(ReplyModel):
    """One page of the sandboxes the key's tenant has, live and paused, oldest first."""

    sandboxes: list[SandboxInfo]
    next_token: str | None = Field(
        default=None, description="the `next_token` that gets the next page; null: this is the last"
    )
