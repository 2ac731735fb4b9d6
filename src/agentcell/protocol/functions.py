"""Functions (deployable units) and their session policy, as they travel on the wire."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from agentcell.protocol.commands import SandboxPath
from agentcell.protocol.common import NoNul, ReplyModel, WireModel
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.sandboxes import (
    MIN_DISK_MB,
    MIN_MEMORY_MB,
    EnvName,
    EnvValue,
    MetaKey,
    MetaValue,
    TemplateName,
)

FunctionName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$", to_lower=True)]
AffinityKind = Literal["header", "cookie", "mcp", "none"]
StdioProcessMode = Literal["session", "shared"]
STREAM_MAX_ENV = "AGENTCELL_MCP_STREAM_MAX_S"
"""read by the stdio bridge: how long a GET stream lasts before the client resumes it"""


def _is_seconds(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


DEFAULT_SESSION_HEADER = "x-agentcell-session-id"
DEFAULT_SESSION_COOKIE = "agentcell_session"
DAY_S = 24 * 3600


class Affinity(WireModel):
    kind: AffinityKind = "header"
    header: HeaderName = DEFAULT_SESSION_HEADER
    cookie: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = DEFAULT_SESSION_COOKIE


class Hook(WireModel):
    """A command run inside the instance, killed at its deadline."""

    cmd: Annotated[str, StringConstraints(min_length=1, max_length=65536), NoNul]
    timeout_s: float = Field(default=30, gt=0, le=3600)


ExcludeGlob = Annotated[str, StringConstraints(pattern=r"^[^\x00]{1,256}$")]
DEFAULT_WORKSPACE_EXCLUDES = ("node_modules", ".venv", "__pycache__", ".cache", ".npm")


class WorkspaceConfig(WireModel):
    """Session workspaces (`/home/user` of an exclusive instance, `/home/user/sessions/<session id>`
    of a shared one) kept in object storage between instances."""

    persist: bool = Field(default=False, description="snapshot the workspace and restore it on resume")
    exclude: list[ExcludeGlob] = Field(
        default_factory=lambda: list(DEFAULT_WORKSPACE_EXCLUDES),
        max_length=64,
        description="a bare name matches at any depth; a glob with '/' matches relative paths",
    )
    keep: int = Field(default=3, ge=1, le=100, description="snapshots kept per workspace")
    sync_interval_s: int = Field(
        default=180, ge=0, le=DAY_S, description="periodic snapshot of live sessions; 0: only at stop"
    )
    restore: Hook | None = Field(
        default=None, description="runs after the files are back, before the first request (e.g. npm ci)"
    )


class PublishedFrom(WireModel):
    """Where a version's code came from when a sandbox published it (POST
    /v1/sandboxes/{id}/publish): set by the server, cleared by a deploy of uploaded code."""

    sandbox_id: str = Field(max_length=64)
    path: str = Field(max_length=4096, description="the directory whose files became /code")
    template: TemplateName
    sandbox_metadata: dict[MetaKey, MetaValue] = Field(default_factory=dict, max_length=64)
    published_at: datetime


class FunctionConfig(WireModel):
    cmd: Annotated[str, StringConstraints(min_length=1, max_length=65536), NoNul] | None = Field(
        default=None, description="serves HTTP on $PORT inside the instance; run by bash -c in /code"
    )
    stdio: Annotated[str, StringConstraints(min_length=1, max_length=65536), NoNul] | None = Field(
        default=None,
        description="instead of cmd: a stdio MCP server (bash -c in /code), served over Streamable HTTP "
        "and legacy SSE by a bridge (see stdio_process)",
    )
    stdio_process: StdioProcessMode = Field(
        default="session",
        description="with stdio: session, a server process per MCP session; shared, one per instance "
        "for all its sessions (started once; the server sees one client)",
    )
    port: int = Field(default=8080, ge=1, le=65535, description="the value of $PORT")
    template: TemplateName = Field(
        default="base", description="what instances start from: base, or a built template (see /v1/templates)"
    )
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, max_length=256)
    cpu: float = Field(default=1.0, ge=0.01, le=64, description="CPU cores, down to 0.01")
    memory_mb: int = Field(default=512, ge=MIN_MEMORY_MB, le=262144)
    disk_mb: int = Field(default=1024, ge=MIN_DISK_MB, le=1048576)
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
    workspace: WorkspaceConfig = Field(default_factory=WorkspaceConfig)
    network: NetworkPolicy = Field(
        default_factory=NetworkPolicy, description="egress: none (default), allowlist or open"
    )
    metadata: dict[MetaKey, MetaValue] = Field(default_factory=dict, max_length=64)
    published_from: PublishedFrom | None = Field(
        default=None, description="set by publish: the sandbox and directory of this version's code"
    )

    @model_validator(mode="after")
    def _consistent(self) -> FunctionConfig:
        if self.min_warm > self.max_instances:
            raise ValueError(
                f"min_warm ({self.min_warm}) must not exceed max_instances ({self.max_instances})"
            )
        if (self.cmd is None) == (self.stdio is None):
            raise ValueError("give exactly one of cmd (an HTTP server) and stdio (a stdio MCP server)")
        if self.stdio is None and self.stdio_process != "session":
            raise ValueError("stdio_process applies to a stdio MCP server: give stdio, or drop stdio_process")
        stream_max = self.env.get(STREAM_MAX_ENV)
        if stream_max is not None and not _is_seconds(stream_max):
            raise ValueError(f"env {STREAM_MAX_ENV} is {stream_max!r}: give seconds, a number (0: no limit)")
        if self.workspace.persist and self.affinity.kind not in ("header", "cookie"):
            raise ValueError(
                "workspace.persist needs affinity header or cookie: workspaces are found again by a "
                f"session key the client reuses, and affinity {self.affinity.kind!r} has none"
            )
        return self


class SandboxPublish(WireModel):
    """POST /v1/sandboxes/{id}/publish: a directory of a running sandbox becomes the next version
    of function `function` (made if new), its files the read-only /code of the instances. `config`
    as a deploy's; its `template`, when not given, is the sandbox's."""

    function: FunctionName
    path: SandboxPath = "/home/user"
    config: FunctionConfig
    packages: bool = Field(
        default=True,
        description="carry what was installed at run time (~/.local: pip, npm -g) to /code/.local, "
        "found there through PYTHONUSERBASE, PATH and NODE_PATH",
    )


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
