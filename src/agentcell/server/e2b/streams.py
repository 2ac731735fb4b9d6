"""Server streams: messages framed as Connect envelopes, always closed by one end-of-stream
envelope (which carries the error when the stream failed), and deadlines on them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from agentcell.errors import AgentcellError
from agentcell.server.api.errors import describe_validation
from agentcell.server.e2b import connect
from agentcell.server.e2b.connect import RpcError
from agentcell.server.e2b.registry import SandboxGone

log = logging.getLogger(__name__)
Message = dict[str, Any]


def stream_error(exc: Exception) -> RpcError:
    if isinstance(exc, RpcError):
        return exc
    if isinstance(exc, AgentcellError):
        return RpcError.from_domain(exc)
    if isinstance(exc, ValidationError):  # a request's fields, checked as our own API checks them
        return RpcError("invalid_argument", describe_validation(exc))
    if isinstance(exc, SandboxGone):
        return RpcError("unavailable", str(exc))
    log.exception("envd stream failed", exc_info=exc)
    return RpcError("internal", "the stream failed inside the server; see its log")


async def enveloped(messages: AsyncIterator[Message]) -> AsyncIterator[bytes]:
    error: RpcError | None = None
    try:
        async for message in messages:
            yield connect.envelope(message)
    except Exception as exc:
        error = stream_error(exc)
    finally:
        aclose = getattr(messages, "aclose", None)
        if aclose is not None:
            await aclose()
    yield connect.end_of_stream(error)


async def bounded(messages: AsyncIterator[Message], deadline_s: float | None) -> AsyncIterator[Message]:
    """The messages until `deadline_s` passes, then `deadline_exceeded`."""
    if deadline_s is None:
        async for message in messages:
            yield message
        return
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline_s
    pending: asyncio.Future[Message] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(anext(messages))
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, until - loop.time()))
            if not done:
                raise RpcError("deadline_exceeded", f"the stream reached its deadline of {deadline_s:g} s")
            try:
                message = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield message
    finally:  # the deadline passed, or the client went away: stop the read in flight
        if pending is not None and not pending.done():
            pending.cancel()
        if pending is not None:
            pending.add_done_callback(_retrieved)


def _retrieved(future: asyncio.Future[Message]) -> None:
    """Mark a stopped read's outcome as seen (its error, if any, ended nobody's stream)."""
    if not future.cancelled():
        future.exception()
