"""/v1/functions/{fn}/sessions and /v1/sessions/{id}: create (pre-warm), get, list, renew, delete."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError

from agentcell.errors import InvalidArgument, NotFound
from agentcell.protocol.sessions import SessionCreate, SessionInfo, SessionList, SessionState, SessionUpdate
from agentcell.protocol.workspaces import SnapshotInfo
from agentcell.server.api.deps import Scheduler
from agentcell.server.api.errors import describe_validation
from agentcell.server.api.lean import lean
from agentcell.server.api.sandboxes import parse_metadata_filter
from agentcell.server.api.tenancy import function_name, is_mine, shown_session
from agentcell.server.api.workspaces import snapshot_reply
from agentcell.server.scheduler.scheduler import Scheduler as FunctionScheduler

router = APIRouter(tags=["sessions"])
LIVE_STATES = "pending, restoring, idle or active; ended sessions are not listed (get them by id)"


SESSION_CREATE_BODY = {
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": SessionCreate.model_json_schema()}},
    }
}


async def parse_session_create(request: Request) -> SessionCreate:
    """The body as a SessionCreate; no body (or a blank one) means every default."""
    raw = await request.body()
    if not raw.strip():
        return SessionCreate()
    try:
        loaded = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # (RecursionError: nested too deep)
        raise InvalidArgument(
            f"the body is not JSON ({exc}); send a SessionCreate object such as "
            '{"key": "alice-1", "ttl_s": 3600}, or no body for the defaults'
        ) from None
    if not isinstance(loaded, dict):
        raise InvalidArgument(
            f"the body must be a JSON object (a SessionCreate), got {type(loaded).__name__}; "
            "send no body for the defaults"
        )
    try:
        return SessionCreate.model_validate(loaded)
    except ValidationError as exc:
        raise InvalidArgument(describe_validation(exc)) from None


@router.post("/v1/functions/{name}/sessions", status_code=201, openapi_extra=SESSION_CREATE_BODY)
@lean
async def create_session(name: str, request: Request, scheduler: Scheduler) -> SessionInfo:
    body = await parse_session_create(request)
    return shown_session((await scheduler.create_session(function_name(name), body)).info())


def _live(state: SessionState | None) -> SessionState | None:
    """Lists hold live sessions only: an ended one is kept (with its end reason) to be looked up
    by id, not listed."""
    if state == "ended":
        raise InvalidArgument(
            "session lists hold live sessions only (pending, restoring, idle, active); "
            "look an ended session up by its id: GET /v1/sessions/{id}"
        )
    return state


@router.get("/v1/functions/{name}/sessions")
async def list_function_sessions(
    name: str,
    scheduler: Scheduler,
    state: Annotated[SessionState | None, Query(description=LIVE_STATES)] = None,
    metadata: Annotated[list[str], Query(max_length=64, description="key=value; all must match")] = [],  # noqa: B006
) -> SessionList:
    found = scheduler.sessions(function_name(name), _live(state), parse_metadata_filter(metadata))
    return SessionList(sessions=[shown_session(s.info()) for s in found])


@router.get("/v1/sessions")
async def list_sessions(
    scheduler: Scheduler,
    function: str | None = None,
    state: Annotated[SessionState | None, Query(description=LIVE_STATES)] = None,
    metadata: Annotated[list[str], Query(max_length=64)] = [],  # noqa: B006
) -> SessionList:
    qualified = function_name(function) if function is not None else None
    found = scheduler.sessions(qualified, _live(state), parse_metadata_filter(metadata))
    return SessionList(sessions=[shown_session(s.info()) for s in found if is_mine(s.function)])


@router.get("/v1/sessions/{session_id}")
@lean
async def get_session(session_id: str, scheduler: Scheduler) -> SessionInfo:
    return shown_session(await scheduler.session_info(session_id))


def _own_live(scheduler: FunctionScheduler, session_id: str) -> str:
    """The id of a live session of the caller's (NotFound for anything else). Another tenant's
    answers with the words of `scheduler.session` for an unknown id: other words would tell that
    the id is a live session somewhere."""
    if not is_mine(scheduler.session(session_id).function):
        raise NotFound(f"session {session_id!r} not found or ended")
    return session_id


@router.patch("/v1/sessions/{session_id}")
@lean
async def update_session(session_id: str, body: SessionUpdate, scheduler: Scheduler) -> SessionInfo:
    session = await scheduler.update_session(_own_live(scheduler, session_id), body)
    return shown_session(session.info())


@router.post("/v1/sessions/{session_id}/snapshot", status_code=201)
async def snapshot_session(session_id: str, scheduler: Scheduler) -> SnapshotInfo:
    """Persist the session's workspace now (functions with workspace.persist)."""
    return snapshot_reply(await scheduler.snapshot_session(_own_live(scheduler, session_id)))


@router.delete("/v1/sessions/{session_id}", status_code=204)
@lean
async def delete_session(session_id: str, scheduler: Scheduler) -> Response:
    await scheduler.delete_session(_own_live(scheduler, session_id))
    return Response(status_code=204)
