"""The API's StreamingResponse: streams like Starlette's, and stops when the client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from starlette.types import Message

from agentcell.server.api.streaming import StreamingResponse

SCOPE = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "method": "GET"}


class Client:
    """The server's side of one request: what the app sent, and a disconnect to give it."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self.body_came = asyncio.Event()
        self._messages: asyncio.Queue[Message] = asyncio.Queue()
        self._messages.put_nowait({"type": "http.request", "body": b"", "more_body": False})

    async def receive(self) -> Message:
        return await self._messages.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message.get("body"):
            self.body_came.set()

    def leave(self) -> None:
        self._messages.put_nowait({"type": "http.disconnect"})

    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")


async def test_every_chunk_is_sent_then_the_end() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"one\n", b"two\n"):
            yield part

    client = Client()
    await StreamingResponse(chunks(), media_type="application/x-ndjson")(SCOPE, client.receive, client.send)
    assert client.sent[0]["type"] == "http.response.start" and client.sent[0]["status"] == 200
    assert client.body() == b"one\ntwo\n"
    assert client.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    await asyncio.sleep(0)  # (its cancellation takes one turn of the loop)
    assert asyncio.all_tasks() == {asyncio.current_task()}  # the disconnect watch is gone


async def test_the_stream_stops_when_the_client_leaves() -> None:
    closed = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            yield b"first\n"
            await asyncio.sleep(3600)
            yield b"never\n"
        finally:
            closed.set()  # where a command stream kills its process

    client = Client()
    call = asyncio.create_task(StreamingResponse(endless())(SCOPE, client.receive, client.send))
    await asyncio.wait_for(client.body_came.wait(), 2)
    client.leave()
    await asyncio.wait_for(call, 2)  # returns normally: the client leaving is not an error
    assert closed.is_set() and not call.cancelled()
    assert b"never" not in client.body()


async def streaming_forever() -> tuple[Client, asyncio.Task[None]]:
    """A response that sent its first chunk and then waits for more, forever."""

    async def endless() -> AsyncIterator[bytes]:
        yield b"first\n"
        await asyncio.sleep(3600)

    client = Client()
    call = asyncio.create_task(StreamingResponse(endless())(SCOPE, client.receive, client.send))
    await asyncio.wait_for(client.body_came.wait(), 2)
    return client, call


async def test_a_cancelled_request_is_still_cancelled() -> None:
    _, call = await streaming_forever()
    call.cancel()  # a server shutting down: not a disconnect, so not swallowed
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def test_a_cancel_in_the_instant_the_client_leaves_is_kept() -> None:
    """The disconnect's own cancellation is swallowed, not a shutdown's that lands with it."""
    client, call = await streaming_forever()
    client.leave()
    # (no event says when the watch has cancelled the stream: poll the task's own count)
    while not call.cancelling():  # noqa: ASYNC110
        await asyncio.sleep(0)
    call.cancel()  # the server shutting down in that same instant
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, 2)
