"""/v1/sandboxes/{id}/code: run code in a context (NDJSON events), and manage the contexts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from fastapi import APIRouter, Response

from agentcell.errors import AgentcellError
from agentcell.protocol.code import (
    CONTEXT_HEADER,
    CodeContextCreate,
    CodeContextInfo,
    CodeContextList,
    CodeRun,
)
from agentcell.server.api.deps import Sandboxes
from agentcell.server.api.streaming import NDJSON, StreamingResponse, json_line
from agentcell.server.interpreter.execution import CodeEventModel

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/code", tags=["code"])


COALESCE_S = 0.05
"""an execution that ends within this window is answered in one body (no chunked stream)"""


async def first_events(
    events: AsyncGenerator[CodeEventModel, None],
) -> tuple[list[bytes], asyncio.Task[CodeEventModel] | None]:
    """The events that come within COALESCE_S, and the pending read if the stream goes on.
    The read is never cancelled (that would end the execution), only left to the stream."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + COALESCE_S
    lines: list[bytes] = []
    while True:
        task = asyncio.ensure_future(anext(events))
        try:
            done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - loop.time()))
        except BaseException:  # the request is being torn down: stop reading (ends the execution)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        if not done:
            return lines, task
        try:
            event = task.result()
        except StopAsyncIteration:
            return lines, None
        lines.append(json_line(event))
        if event.type == "end":
            return lines, None


async def rest_of(
    events: AsyncGenerator[CodeEventModel, None], head: list[bytes], pending: asyncio.Task[CodeEventModel]
) -> AsyncIterator[bytes]:
    async with aclosing(events):
        if head:
            yield b"".join(head)
        try:
            yield json_line(await pending)
        except StopAsyncIteration:
            return
        async for event in events:
            yield json_line(event)


@router.post(
    "",
    response_class=StreamingResponse,
    responses={200: {"content": {NDJSON: {}}, "description": "CodeEvent lines, the last one `end`"}},
)
async def run_code(sandbox_id: str, body: CodeRun, sandboxes: Sandboxes) -> Response:
    """Run code; the kernel is started first if needed (a failure to start is an error answer).
    A short execution is answered in one body, a longer one streams its events as they come."""
    context = await sandboxes.code(sandbox_id).for_run(body)
    try:
        await context.ensure_started()
    except AgentcellError:
        sandboxes.running(sandbox_id)  # the sandbox itself ended meanwhile: say that, not "retry"
        raise
    events = context.run(body.code, body.env, body.timeout_s)
    headers = {"cache-control": "no-store", CONTEXT_HEADER: context.id}
    head, pending = await first_events(events)
    if pending is None:
        await events.aclose()
        return Response(b"".join(head), media_type=NDJSON, headers=headers)
    return StreamingResponse(rest_of(events, head, pending), media_type=NDJSON, headers=headers)


@router.post("/contexts", status_code=201)
async def create_context(sandbox_id: str, body: CodeContextCreate, sandboxes: Sandboxes) -> CodeContextInfo:
    """A new context; its kernel starts on first use."""
    return (await sandboxes.code(sandbox_id).create(body)).info()


@router.get("/contexts")
async def list_contexts(sandbox_id: str, sandboxes: Sandboxes) -> CodeContextList:
    return CodeContextList(contexts=[c.info() for c in sandboxes.code(sandbox_id).all()])


@router.get("/contexts/{context_id}")
async def get_context(sandbox_id: str, context_id: str, sandboxes: Sandboxes) -> CodeContextInfo:
    return sandboxes.code(sandbox_id).get(context_id).info()


@router.post("/contexts/{context_id}/restart")
async def restart_context(sandbox_id: str, context_id: str, sandboxes: Sandboxes) -> CodeContextInfo:
    """A fresh kernel (state lost); an execution still running ends with `kernel_died`."""
    context = sandboxes.code(sandbox_id).get(context_id)
    await context.restart()
    return context.info()


@router.post("/contexts/{context_id}/interrupt", status_code=204)
async def interrupt_context(sandbox_id: str, context_id: str, sandboxes: Sandboxes) -> Response:
    """SIGINT to the running execution's process group; the kernel and its state survive."""
    await sandboxes.code(sandbox_id).get(context_id).interrupt()
    return Response(status_code=204)


@router.delete("/contexts/{context_id}", status_code=204)
async def remove_context(sandbox_id: str, context_id: str, sandboxes: Sandboxes) -> Response:
    await sandboxes.code(sandbox_id).remove(context_id)
    return Response(status_code=204)
