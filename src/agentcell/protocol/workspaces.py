"""Stored workspaces: the snapshots of session files kept in object storage."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from agentcell.protocol.common import ReplyModel


class SnapshotInfo(ReplyModel):
    seq: int
    created_at: datetime
    files: int
    logical_bytes: int = Field(description="bytes of the files in this snapshot")
    uploaded_bytes: int = Field(description="bytes this snapshot had to upload (unchanged files are not)")
    stored_bytes: int = Field(description="bytes the workspace holds in storage after this snapshot")


class WorkspaceInfo(ReplyModel):
    storage_path: str
    function: str | None
    key: str | None
    stored_bytes: int
    last_snapshot: SnapshotInfo | None
    error: str | None = Field(default=None, description="why the last restore or snapshot failed")
    session_id: str | None = Field(
        default=None,
        description="the live session using it; for a paused sandbox's or a snapshot's files, the "
        "id of that sandbox or snapshot (as `sandbox_id` or `snapshot_id`; kept for older clients, "
        "which read a non-null value as 'in use')",
    )
    sandbox_id: str | None = Field(
        default=None, description="the paused sandbox whose /home/user this is (null: not a paused sandbox's)"
    )
    snapshot_id: str | None = Field(
        default=None,
        description="the sandbox snapshot whose files these are (null: not a snapshot's); "
        "deleted with it, through /v1/snapshots",
    )


class WorkspaceList(ReplyModel):
    tenant: str
    stored_bytes: int = Field(description="all workspaces of the tenant")
    quota_bytes: int | None = Field(description="the tenant's stored-bytes quota; null: unlimited")
    workspaces: list[WorkspaceInfo]
