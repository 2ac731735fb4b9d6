"""The E2B code interpreter's in-sandbox server (port 49999): `/execute` streams one execution as
NDJSON lines; `/contexts` manages contexts. Backed by agentcell's code contexts (Jupyter kernels
for Python, runners for JavaScript and bash)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from agentcell.errors import NotFound, QuotaExceeded
from agentcell.protocol.code import (
    CHART_MIME,
    TABLE_MIME,
    CodeContextCreate,
    CodeEndEvent,
    CodeErrorEvent,
    CodeOutputEvent,
    CodeResultEvent,
    CodeRun,
)
from agentcell.server.api.streaming import StreamingResponse
from agentcell.server.clock import Clock
from agentcell.server.e2b.envd import authorized_sandbox
from agentcell.server.e2b.registry import E2bRegistry
from agentcell.server.e2b.target import target_of
from agentcell.server.interpreter.context import CodeContext
from agentcell.server.interpreter.contexts import CodeContexts
from agentcell.server.interpreter.execution import CodeEventModel
from agentcell.server.sandbox.driver import SandboxFiles

router = APIRouter()
NDJSON = "application/x-ndjson"
DEFAULT_LANGUAGES = ("python", "javascript")
MIME_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/chart": "chart",
    CHART_MIME: "chart",
    TABLE_MIME: "data",
}


class ExecuteE2b(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    code: str
    context_id: str | None = None
    language: str | None = None
    env_vars: dict[str, str] | None = None


class ContextCreateE2b(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    language: str | None = None
    cwd: str | None = Field(default=None, min_length=1)


def registry(request: Request) -> E2bRegistry:
    found: E2bRegistry = request.app.state.e2b
    return found


def contexts(request: Request) -> CodeContexts:
    """The code contexts of the request's sandbox: with its envd or its traffic access token, as
    E2B's SDK sends only the latter for them. Running code takes the envd token (/execute)."""
    return registry(request).sandboxes.code(authorized_sandbox(request, traffic_ok=True).id)


def context_reply(context: CodeContext) -> dict[str, str]:
    return {"id": context.id, "language": context.spec.language, "cwd": context.spec.cwd}


def result_line(data: dict[str, Any], is_main: bool) -> dict[str, Any]:
    line: dict[str, Any] = {"type": "result", "is_main_result": is_main}
    extra: dict[str, Any] = {}
    for mime, value in data.items():
        field = MIME_FIELDS.get(mime)
        if field is None:
            extra[mime] = value
        else:
            line[field] = value
    line["extra"] = extra
    return line


def lines_of(event: CodeEventModel, now: str, saw_error: bool) -> list[dict[str, Any]]:
    """The NDJSON lines of one of our events (`end` becomes the execution count and the end marker)."""
    if isinstance(event, CodeOutputEvent):
        return [{"type": event.type, "text": event.text, "timestamp": now}]
    if isinstance(event, CodeResultEvent):
        return [result_line(event.data, event.is_main_result)]
    if isinstance(event, CodeErrorEvent):
        return [{"type": "error", "name": event.name, "value": event.value, "traceback": event.traceback}]
    out: list[dict[str, Any]] = []
    if event.execution_count is not None:
        out.append({"type": "number_of_executions", "execution_count": event.execution_count})
    if event.status in ("kernel_died", "timeout") and not saw_error:
        name = "KernelDied" if event.status == "kernel_died" else "TimeoutError"
        value = "the kernel died; the context's state is lost" if name == "KernelDied" else "timed out"
        out.append({"type": "error", "name": name, "value": value, "traceback": ""})
    out.append({"type": "end_of_execution"})
    return out


class StreamBroken(BaseException):
    """Ends a response mid-body: the connection is closed without the final chunk, as when E2B's
    in-sandbox server dies with its sandbox. Not an Exception, so no error page is attempted; the
    E2B mount catches it."""


async def ndjson(
    events: AsyncGenerator[CodeEventModel, None],
    context: CodeContext,
    clock: Clock,
    sandbox_ended: Callable[[], bool],
) -> AsyncIterator[bytes]:
    """The execution's lines. A client that goes away (the SDK's `timeout`) ends the execution:
    Starlette cancels the response, and the kernel is interrupted (its state survives). The
    interrupt is shielded: the cancellation would otherwise cut it short too. A kernel that died
    with its sandbox breaks the stream, so the SDK checks the sandbox and reports it killed."""
    saw_error = False
    ended = False
    try:
        async with aclosing(events):
            async for event in events:
                ended = isinstance(event, CodeEndEvent)
                if isinstance(event, CodeEndEvent) and event.status == "kernel_died" and sandbox_ended():
                    raise StreamBroken
                saw_error |= isinstance(event, CodeErrorEvent)
                now = datetime.fromtimestamp(clock.now(), UTC).isoformat().replace("+00:00", "Z")
                yield b"".join(json.dumps(line).encode() + b"\n" for line in lines_of(event, now, saw_error))
    finally:
        if not ended:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await context.interrupt()


def _has_ended(reg: E2bRegistry, sandbox_id: str) -> bool:
    try:
        return reg.sandboxes.get(sandbox_id).state != "running"
    except NotFound:
        return True


@router.post("/execute")
async def execute(request: Request, body: ExecuteE2b) -> Response:
    reg = registry(request)
    sandbox = authorized_sandbox(request)
    run = CodeRun.model_validate(
        {
            "code": body.code,
            "context_id": body.context_id,
            "language": body.language,
            "env": body.env_vars or {},
            "timeout_s": None,
        }
    )
    context = await reg.sandboxes.code(sandbox.id).for_run(run)
    await context.ensure_started()
    events = context.run(run.code, run.env, run.timeout_s)
    return StreamingResponse(
        ndjson(events, context, reg.clock, partial(_has_ended, reg, sandbox.id)),
        media_type=NDJSON,
        headers={"cache-control": "no-store"},
    )


@router.post("/contexts")
async def create_context(request: Request, body: ContextCreateE2b) -> dict[str, str]:
    """Like E2B's, a context whose `cwd` does not exist yet starts there: the directory is made
    (as the sandbox user, so only where that user may write)."""
    wanted = {k: v for k, v in (("language", body.language), ("cwd", body.cwd)) if v}
    if body.cwd:
        files = registry(request).sandboxes.files(authorized_sandbox(request, traffic_ok=True).id)
        if not await _exists(files, body.cwd):
            await files.make_dir(body.cwd)
    context = await contexts(request).create(CodeContextCreate.model_validate(wanted))
    return context_reply(context)


async def _exists(files: SandboxFiles, path: str) -> bool:
    try:
        await files.stat(path)
    except NotFound:
        return False
    return True


@router.get("/contexts")
async def list_contexts(request: Request) -> list[dict[str, str]]:
    """Every context, the default Python and JavaScript ones included (made now if need be; their
    kernels start on first use)."""
    found = contexts(request)
    for language in DEFAULT_LANGUAGES:
        with contextlib.suppress(QuotaExceeded):  # a sandbox at its context limit lists what it has
            await found.default(language)
    # the defaults first, then the others in the order they were made (E2B's order)
    return [context_reply(c) for c in sorted(found.all(), key=lambda c: not c.spec.is_default)]


@router.post("/contexts/{context_id}/restart", status_code=204)
async def restart_context(request: Request, context_id: str) -> Response:
    await contexts(request).get(context_id).restart()
    return Response(status_code=204)


@router.delete("/contexts/{context_id}", status_code=204)
async def remove_context(request: Request, context_id: str) -> Response:
    await contexts(request).remove(context_id)
    return Response(status_code=204)


@router.get("/health")
async def health(request: Request) -> Response:
    registry(request).running(target_of(request).sandbox_id)
    return Response("OK", media_type="text/plain")
