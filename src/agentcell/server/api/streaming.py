"""Streamed answers: the JSON-lines encoders every stream uses, and a StreamingResponse (Starlette's,
watching for the client's disconnect with one plain task).

Under ASGI HTTP before 2.4 (the gateway's in-process calls and uvicorn both speak 2.3) Starlette
runs each streaming response in an anyio task group, to stop the stream when the client leaves,
and cancelling the group formats the task's repr. This one does the same with a task that waits
for the disconnect and cancels the streaming task. A two-chunk stream, in a loop: 61-79 µs with
Starlette's, 19-28 µs with this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from pydantic import BaseModel
from starlette import responses
from starlette.types import Receive, Scope, Send

NDJSON = "application/x-ndjson"
"""the media type of every stream of JSON lines (commands, code, builds, watches)"""

Line = TypeVar("Line", bound=BaseModel)


def json_line(model: BaseModel) -> bytes:
    return model.model_dump_json().encode() + b"\n"


async def ndjson(items: AsyncIterator[Line]) -> AsyncIterator[bytes]:
    """One JSON line (and one chunk) per item."""
    async for item in items:
        yield json_line(item)


async def ndjson_batches(
    batches: AsyncIterator[list[Line]], encode: Callable[[Line], bytes] = json_line
) -> AsyncIterator[bytes]:
    """One chunk (one write) per batch of lines: a follower that fell behind catches up in one."""
    async for batch in batches:
        yield b"".join(map(encode, batch))


class StreamingResponse(responses.StreamingResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        if scope["type"] != "http" or streaming is None:
            await super().__call__(scope, receive, send)
            return
        client_left = finished = False

        def on_disconnect(watch: asyncio.Future[None]) -> None:
            nonlocal client_left
            if watch.cancelled() or watch.exception() is not None or finished:
                return
            client_left = True
            streaming.cancel()

        watch = asyncio.ensure_future(self.listen_for_disconnect(receive))
        watch.add_done_callback(on_disconnect)
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            # Swallowed only when the client leaving was the one cancellation (as Starlette's
            # would); a shutdown cancelling the request in the same instant still ends it.
            if not client_left or streaming.uncancel() > 0:
                raise
        finally:
            finished = True
            watch.cancel()
        if self.background is not None:
            await self.background()
