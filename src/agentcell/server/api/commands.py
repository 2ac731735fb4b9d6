"""/v1/sandboxes/{id}/commands and /processes: run, stream, list, stdin, signal, resize."""

from __future__ import annotations

import signal
import weakref
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from agentcell.protocol.commands import (
    CommandRequest,
    ProcessInfo,
    ProcessList,
    PtySize,
    SignalRequest,
    StdinWrite,
)
from agentcell.server.api.deps import Sandboxes
from agentcell.server.api.lean import lean
from agentcell.server.api.streaming import NDJSON, StreamingResponse, ndjson, ndjson_batches
from agentcell.server.scheduler.processes import Event
from agentcell.server.scheduler.terminals import TerminalService

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}", tags=["commands"])


async def _terminals(request: Request) -> TerminalService:
    found: TerminalService = request.app.state.terminals
    return found


Terminals = Annotated[TerminalService, Depends(_terminals)]


_LINES: weakref.WeakKeyDictionary[Event, bytes] = weakref.WeakKeyDictionary()
"""each followed event's NDJSON line, encoded once for all its followers (a flood's output events
are 64 KiB each, and encoding them again for every follower was most of what a follower cost);
an entry goes with its event, once the log has dropped it and no follower holds it"""


def ndjson_line(event: Event) -> bytes:
    line = _LINES.get(event)
    if line is None:
        line = _LINES[event] = event.model_dump_json().encode() + b"\n"
    return line


@router.post(
    "/commands",
    response_model=None,
    responses={
        200: {"content": {NDJSON: {}}, "description": "CommandEvent lines"},
        201: {"model": ProcessInfo},
    },
)
@lean
async def run_command(
    sandbox_id: str, body: CommandRequest, sandboxes: Sandboxes, terminals: Terminals
) -> Response:
    if body.pty is not None:
        process = await terminals.start(sandbox_id, body)
    else:
        process = await sandboxes.start_process(sandbox_id, body)
    if body.background:
        return JSONResponse(process.info().model_dump(mode="json"), status_code=201)
    events = sandboxes.run_foreground(process, sandbox_id)
    return StreamingResponse(ndjson(events), media_type=NDJSON, headers={"cache-control": "no-store"})


@router.get("/processes")
async def list_processes(sandbox_id: str, sandboxes: Sandboxes) -> ProcessList:
    return ProcessList(processes=[p.info() for p in sandboxes.processes(sandbox_id)])


@router.get("/processes/{process_id}/events", response_class=StreamingResponse)
async def follow_process(sandbox_id: str, process_id: str, sandboxes: Sandboxes) -> StreamingResponse:
    """429 `quota_exceeded` past MAX_FOLLOWERS readers of the process at once."""
    batches = sandboxes.process(sandbox_id, process_id).follow()
    return StreamingResponse(ndjson_batches(batches, ndjson_line), media_type=NDJSON)


@router.post("/processes/{process_id}/stdin", status_code=204)
@lean
async def write_stdin(sandbox_id: str, process_id: str, body: StdinWrite, sandboxes: Sandboxes) -> Response:
    await sandboxes.process(sandbox_id, process_id).write_stdin(body.data.encode(), body.close)
    return Response(status_code=204)


@router.post("/processes/{process_id}/signal", status_code=204)
@lean
async def signal_process(
    sandbox_id: str, process_id: str, body: SignalRequest, sandboxes: Sandboxes
) -> Response:
    sandboxes.process(sandbox_id, process_id).send_signal(signal.Signals[body.signal].value)
    return Response(status_code=204)


@router.post("/processes/{process_id}/resize", status_code=204)
async def resize_terminal(sandbox_id: str, process_id: str, body: PtySize, terminals: Terminals) -> Response:
    """Set the window of a command started with `pty` (it gets SIGWINCH)."""
    terminals.resize(sandbox_id, process_id, body)
    return Response(status_code=204)
