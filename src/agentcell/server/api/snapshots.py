"""/v1/snapshots and /v1/sandboxes/{id}/snapshots|fork: a running sandbox's files kept as a
snapshot (its processes are not), listed, deleted, and started as new sandboxes (`POST
/v1/sandboxes` with `"snapshot"`, or a fork: one snapshot started `count` times and dropped).

The work is SandboxSnapshots' (scheduler/sandbox_snapshots.py), shared with the E2B API; a tenant
sees only its own snapshots (another's answer 404, as an unknown id does).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response

from agentcell.errors import AgentcellError
from agentcell.protocol.common import ErrorEnvelope
from agentcell.protocol.snapshots import (
    MAX_SNAPSHOT_PAGE,
    ForkList,
    ForkOutcome,
    SandboxFork,
    SandboxSnapshotCreate,
    SandboxSnapshotInfo,
    SandboxSnapshotList,
)
from agentcell.server.api.deps import Snapshots, Traffic
from agentcell.server.api.errors import request_id_var
from agentcell.server.api.lean import lean
from agentcell.server.api.paging import after_token, page_token
from agentcell.server.api.sandboxes import answer
from agentcell.server.scheduler.sandbox_snapshots import SandboxSnapshot
from agentcell.server.scheduler.sandboxes import Sandbox
from agentcell.server.scheduler.traffic import PrivateTraffic

router = APIRouter(tags=["snapshots"])


def snapshot_info(snapshot: SandboxSnapshot) -> SandboxSnapshotInfo:
    record, request = snapshot.record, snapshot.request
    return SandboxSnapshotInfo(
        id=record.id,
        name=record.name,
        sandbox_id=record.sandbox_id,
        template=request.template,
        cpu=request.cpu,
        memory_mb=request.memory_mb,
        disk_mb=request.disk_mb,
        created_at=datetime.fromtimestamp(record.created_at, UTC),
    )


@router.post("/v1/sandboxes/{sandbox_id}/snapshots", status_code=201)
async def create_snapshot(
    sandbox_id: str, snapshots: Snapshots, body: SandboxSnapshotCreate | None = None
) -> SandboxSnapshotInfo:
    """Keep the running sandbox's /home/user as a snapshot; the sandbox keeps running (frozen only
    while its files are read). A name already given to one of the tenant's snapshots replaces
    that snapshot's files (same id)."""
    taken = await snapshots.take(sandbox_id, body.name if body is not None else None)
    return snapshot_info(taken)


@router.get("/v1/snapshots")
async def list_snapshots(
    snapshots: Snapshots,
    sandbox_id: Annotated[str | None, Query(max_length=128, description="taken of this sandbox")] = None,
    name: Annotated[str | None, Query(max_length=128, description="with this name (or id)")] = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_SNAPSHOT_PAGE, description="at most this many")
    ] = MAX_SNAPSHOT_PAGE,
    next_token: Annotated[str | None, Query(description="the page after the one that gave it")] = None,
) -> SandboxSnapshotList:
    """The caller's snapshots, oldest first, a page of `limit`; the answer's `next_token` (null
    on the last page) gets the next one."""
    after = after_token(next_token, "next_token") if next_token else None
    page, more = snapshots.find_page(sandbox_id or None, name or None, limit, after)
    token = page_token(page[-1].record.created_at, page[-1].id) if more else None
    return SandboxSnapshotList(snapshots=[snapshot_info(s) for s in page], next_token=token)


@router.get("/v1/snapshots/{snapshot_id}")
@lean
async def get_snapshot(snapshot_id: str, snapshots: Snapshots) -> SandboxSnapshotInfo:
    return snapshot_info(snapshots.get(snapshot_id))


@router.delete("/v1/snapshots/{snapshot_id}", status_code=204)
@lean
async def delete_snapshot(snapshot_id: str, snapshots: Snapshots) -> Response:
    """Delete the snapshot and its files (sandboxes started from it keep theirs)."""
    await snapshots.delete(snapshot_id)
    return Response(status_code=204)


@router.post("/v1/sandboxes/{sandbox_id}/fork", status_code=201)
async def fork_sandbox(
    sandbox_id: str, snapshots: Snapshots, traffic: Traffic, body: SandboxFork | None = None
) -> ForkList:
    """`count` new sandboxes with the running sandbox's request and files (one snapshot, deleted
    once they have started; the source keeps running). Each fork is its sandbox or, when it could
    not start, the error envelope saying why: one failing does not undo the others."""
    body = body or SandboxFork()
    forks = await snapshots.fork(sandbox_id, body.count, body.timeout_s)
    return ForkList(forks=[_outcome(fork, traffic) for fork in forks])


def _outcome(fork: Sandbox | AgentcellError, traffic: PrivateTraffic) -> ForkOutcome:
    if isinstance(fork, AgentcellError):
        error = ErrorEnvelope(code=fork.code, message=fork.message, request_id=request_id_var.get())
        return ForkOutcome(error=error)
    return ForkOutcome(sandbox=answer(fork, traffic))
