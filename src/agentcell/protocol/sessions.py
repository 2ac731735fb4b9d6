"""Sessions: a client's binding to one instance of a function."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from agentcell.protocol.common import ReplyModel, WireModel
from agentcell.protocol.functions import DAY_S
from agentcell.protocol.sandboxes import MetaKey, MetaValue

SessionKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")]
SessionState = Literal["pending", "restoring", "active", "idle", "ended"]
EndReason = Literal[
    "ttl", "idle", "deleted", "instance_failed", "restore_failed", "function_deleted", "shutdown"
]
WorkspaceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class SessionCreate(WireModel):
    key: SessionKey | None = Field(
        default=None, description="the routing key clients will send; generated if absent"
    )
    ttl_s: int | None = Field(
        default=None, ge=1, le=30 * DAY_S, description="default: the function's session_ttl_s"
    )
    idle_timeout_s: int | None = Field(default=None, ge=1, le=30 * DAY_S)
    metadata: dict[MetaKey, MetaValue] = Field(default_factory=dict, max_length=64)
    workspace: WorkspaceName | None = Field(
        default=None,
        description="a named workspace of the tenant to use instead of the one of (function, key)",
    )


class SessionUpdate(WireModel):
    """New limits counted from now; omitted ones stay as they are."""

    ttl_s: int | None = Field(default=None, ge=1, le=30 * DAY_S)
    idle_timeout_s: int | None = Field(default=None, ge=1, le=30 * DAY_S)


class SessionWorkspace(ReplyModel):
    path: str = Field(description="the directory inside the instance")
    storage_path: str = Field(description="the prefix in object storage")
    quota_bytes: int = Field(description="the instance's workspace size limit (write-time ENOSPC)")


class SessionInfo(ReplyModel):
    id: str
    key: str
    function: str
    version: int
    instance_id: str | None
    state: SessionState
    end_reason: EndReason | None = None
    created_at: datetime
    last_active_at: datetime
    expires_at: datetime
    idle_expires_at: datetime
    ttl_s: int
    idle_timeout_s: int
    metadata: dict[str, str]
    workspace: SessionWorkspace | None = Field(
        default=None, description="where the session's files live; null when the function does not persist"
    )


class SessionList(ReplyModel):
    sessions: list[SessionInfo]
