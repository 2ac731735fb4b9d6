"""/v1/workspaces: the tenant's stored workspaces, their snapshots and usage.

Besides session workspaces, it lists the stored files of paused sandboxes (`_sandboxes`) and of
sandbox snapshots (`_snapshots`), each named as what it is: they are stored and counted as
workspaces (the storage quota, usage rows and `stored_bytes` add them up), but they are held by
their sandbox or snapshot and cannot be deleted here (409, saying what to delete instead).
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Response

from agentcell.errors import NotFound
from agentcell.protocol.workspaces import SnapshotInfo, WorkspaceInfo, WorkspaceList
from agentcell.server.api.deps import Workspaces
from agentcell.server.auth.principal import current_tenant
from agentcell.server.meta.records import WorkspaceRecord
from agentcell.server.scheduler.sandbox_pause import SANDBOXES_SEGMENT
from agentcell.server.scheduler.sandbox_snapshots import SNAPSHOTS_SEGMENT
from agentcell.server.storage import snapshots

router = APIRouter(tags=["workspaces"])


def snapshot_reply(info: snapshots.SnapshotInfo) -> SnapshotInfo:
    return SnapshotInfo(
        seq=info.seq,
        created_at=datetime.fromtimestamp(info.created_at, UTC),
        files=info.files,
        logical_bytes=info.logical_bytes,
        uploaded_bytes=info.uploaded_bytes,
        stored_bytes=info.stored_bytes,
    )


def _workspace_info(record: WorkspaceRecord, user: str | None) -> WorkspaceInfo:
    """`user`: the id that holds the workspace, a live session's, a paused sandbox's or a
    snapshot's (the last two are also named as what they are)."""
    last = None
    if record.seq:
        stored = (record.files, record.logical_bytes, record.uploaded_bytes, record.stored_bytes)
        last = snapshot_reply(snapshots.SnapshotInfo(record.seq, record.snapshot_at, *stored))
    return WorkspaceInfo(
        storage_path=record.path,
        function=record.function,
        key=record.key,
        stored_bytes=record.stored_bytes,
        last_snapshot=last,
        error=record.error,
        session_id=user,
        sandbox_id=record.key if record.function == SANDBOXES_SEGMENT else None,
        snapshot_id=record.key if record.function == SNAPSHOTS_SEGMENT else None,
    )


@router.get("/v1/workspaces")
async def list_workspaces(workspaces: Workspaces) -> WorkspaceList:
    tenant = current_tenant()
    records = await workspaces.records(tenant)
    return WorkspaceList(
        tenant=tenant,
        stored_bytes=sum(r.stored_bytes for r in records),
        quota_bytes=workspaces.quota_bytes(tenant),
        workspaces=[_workspace_info(r, workspaces.user_of(r.path)) for r in records],
    )


async def _record(workspaces: Workspaces, path: str) -> WorkspaceRecord:
    record = await workspaces.record(path, current_tenant())
    if record is None:
        raise NotFound(f"workspace {path!r} not found; GET /v1/workspaces lists them")
    return record


@router.get("/v1/workspaces/{path:path}")
async def get_workspace(path: str, workspaces: Workspaces) -> WorkspaceInfo:
    return _workspace_info(await _record(workspaces, path), workspaces.user_of(path))


@router.delete("/v1/workspaces/{path:path}", status_code=204)
async def delete_workspace(path: str, workspaces: Workspaces) -> Response:
    """Drop every stored snapshot of a workspace no live session uses."""
    await _record(workspaces, path)
    await workspaces.delete(path)
    return Response(status_code=204)
