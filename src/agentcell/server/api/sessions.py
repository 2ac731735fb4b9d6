"""/v1/functions/{fn}/sessions and /v1/sessions/{id}: create (pre-warm), get, list, renew, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from agentcell.protocol.sessions import SessionCreate, SessionInfo, SessionList, SessionState, SessionUpdate
from agentcell.server.api.deps import Scheduler
from agentcell.server.api.sandboxes import parse_metadata_filter

router = APIRouter(tags=["sessions"])


@router.post("/v1/functions/{name}/sessions", status_code=201)
async def create_session(name: str, body: SessionCreate, scheduler: Scheduler) -> SessionInfo:
    return (await scheduler.create_session(name, body)).info()


@router.get("/v1/functions/{name}/sessions")
async def list_function_sessions(
    name: str,
    scheduler: Scheduler,
    state: SessionState | None = None,
    metadata: Annotated[list[str], Query(max_length=64, description="key=value; all must match")] = [],  # noqa: B006
) -> SessionList:
    found = scheduler.sessions(name, state, parse_metadata_filter(metadata))
    return SessionList(sessions=[s.info() for s in found])


@router.get("/v1/sessions")
async def list_sessions(
    scheduler: Scheduler,
    function: str | None = None,
    state: SessionState | None = None,
    metadata: Annotated[list[str], Query(max_length=64)] = [],  # noqa: B006
) -> SessionList:
    found = scheduler.sessions(function, state, parse_metadata_filter(metadata))
    return SessionList(sessions=[s.info() for s in found])


@router.get("/v1/sessions/{session_id}")
async def get_session(session_id: str, scheduler: Scheduler) -> SessionInfo:
    return await scheduler.session_info(session_id)


@router.patch("/v1/sessions/{session_id}")
async def update_session(session_id: str, body: SessionUpdate, scheduler: Scheduler) -> SessionInfo:
    return (await scheduler.update_session(session_id, body)).info()


@router.delete("/v1/sessions/{session_id}", status_code=204)
async def delete_session(session_id: str, scheduler: Scheduler) -> Response:
    await scheduler.delete_session(session_id)
    return Response(status_code=204)
