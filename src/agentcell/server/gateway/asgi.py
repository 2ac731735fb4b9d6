"""In-process ASGI: an exchange whose route names an `AppUpstream` is answered by calling the app.

An `AppCall` stands where an upstream connection would stand for its exchange: request body bytes
come in through `write()`, the app's messages go out as the exchange's response events, and the
exchange's backpressure and end reach the app the way an HTTP server's would. This saves the
control plane a Unix-socket hop per request (a second HTTP parse and serialization, four
syscalls, two turns of the event loop: 60-90 us of CPU on a small GET here).

ASGI HTTP 2.3 semantics, as uvicorn serves them: `receive()` gives the body, then blocks until
the client is gone or the response is complete and then says `http.disconnect`; `send()` after
that is dropped; a response body waits while the client is not draining. Requests that need more
of HTTP (an upgrade, a chunked body, `Expect: 100-continue`) are not served this way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from agentcell.server.gateway.headers import NAME_CACHE, name_info
from agentcell.server.gateway.route import REQUEST_ID_HEADER, AsgiApp, AsgiMessage, RequestHead

if TYPE_CHECKING:
    from agentcell.server.gateway.upstream import ResponseSink

log = logging.getLogger(__name__)

BODY_HIGH_WATER = 256 * 1024  # request body bytes the app has not taken yet before the client pauses


def serves_in_process(head: RequestHead) -> bool:
    """Whether an in-process app can take this request (see the module docstring)."""
    index = head.index
    return b"upgrade" not in index and b"transfer-encoding" not in index and b"expect" not in index


def http_scope(
    head: RequestHead, path: bytes, scheme: str, server: tuple[str, int | None] | None
) -> dict[str, Any]:
    names = NAME_CACHE
    headers = []
    for name, value in head.headers:
        lname = (names.get(name) or name_info(name))[0]
        if lname != REQUEST_ID_HEADER:  # replaced by the request's id, as for any upstream
            headers.append((lname, value))
    headers.append((REQUEST_ID_HEADER, head.request_id.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": head.http_version.decode(),
        "method": head.method.decode("latin-1"),
        "scheme": scheme,
        "path": unquote(path.decode("latin-1")),
        "raw_path": path,
        "query_string": head.query,
        "root_path": "",
        "headers": headers,
        "client": (head.client, 0) if head.client else None,
        "server": server,
        "state": {},
    }


class AppCall:
    """One request served by an in-process ASGI app (see the module docstring)."""

    requests = 1  # never retried on another connection

    def __init__(self, sink: ResponseSink, app: AsgiApp, scope: dict[str, Any], body_bytes: int) -> None:
        self.sink = sink
        self.scope = scope
        self.write_paused = False  # the app has not taken the request body fast enough
        self.body_length = -1  # set by the exchange for a Content-Length response; unused here
        self._app = app
        self._body: deque[bytes] = deque()
        self._queued = 0
        self._body_left = body_bytes  # request body bytes still to come from the client
        self._request_given = False
        self._ended = False  # the client left or the response is complete
        self._wakeup: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._started = False
        self._complete = False
        self._declared_length = -1  # the Content-Length the body is held to (not for HEAD)
        self._sent = 0

    async def run(self) -> None:
        """Call the app; an exception, or an answer it left unfinished, ends the exchange."""
        try:
            await self._app(self.scope, self._receive, self._send)
        except Exception:
            log.exception("%s %s failed in the app", self.scope["method"], self.scope["path"])
            self._fail("the app failed")
            return
        if not self._complete:
            self._fail("the app returned without a complete response")

    def _fail(self, message: str) -> None:
        if self._ended:
            return
        self._ended = True
        self.sink.on_app_error(message)

    # --- from the exchange (as an upstream connection) ----------------------------------------

    def write(self, data: bytes) -> None:
        """Request body bytes, as the client sends them (never chunked: see serves_in_process)."""
        self._body.append(data)
        self._queued += len(data)
        self._body_left -= len(data)
        if self._queued > BODY_HIGH_WATER and not self.write_paused:
            self.write_paused = True
            self.sink.on_upstream_writable(False)
        self._wake()

    def writelines(self, parts: list[bytes]) -> None:
        for part in parts:
            self.write(part)

    def unsent_bytes(self) -> int:
        """Request body bytes the app has not taken yet (the gateway's send timeout reads it)."""
        return self._queued

    def set_reading(self, reading: bool) -> None:
        """The client is (not) draining the response: the app's body sends wait meanwhile."""
        if reading:
            self._writable.set()
        else:
            self._writable.clear()

    def release(self) -> None:
        self.close()

    def close(self) -> None:
        """The exchange is over (answered, client gone, or timed out): the app hears a disconnect."""
        self._ended = True
        self._writable.set()
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # --- the app's side ------------------------------------------------------------------------

    async def _receive(self) -> AsgiMessage:
        while True:
            if self._body:
                return self._take_body()
            if not self._request_given and self._body_left <= 0:
                self._request_given = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if self._ended:
                return {"type": "http.disconnect"}
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    def _take_body(self) -> AsgiMessage:
        body = self._body.popleft() if len(self._body) == 1 else b"".join(self._body)
        self._body.clear()
        self._queued = 0
        if self.write_paused and not self._ended:
            self.write_paused = False
            self.sink.on_upstream_writable(True)
        more = self._body_left > 0
        self._request_given = not more
        return {"type": "http.request", "body": body, "more_body": more}

    async def _send(self, message: AsgiMessage) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self._start(message)
        elif kind == "http.response.body":
            await self._body_part(message)
        else:
            raise RuntimeError(f"unexpected ASGI message type {kind!r}")

    def _start(self, message: AsgiMessage) -> None:
        if self._started:
            raise RuntimeError("http.response.start sent twice")
        self._started = True
        headers = [(bytes(name).lower(), bytes(value)) for name, value in message.get("headers", ())]
        length = next((v for n, v in headers if n == b"content-length" and v.isdigit()), None)
        if length is None:  # an unsized body ends with the app's last message, not a close
            headers.append((b"transfer-encoding", b"chunked"))
        elif self.scope["method"] != "HEAD":  # (a HEAD answer's length describes no body here)
            self._declared_length = int(length)
        if not self._ended:
            self.sink.on_response_head(int(message["status"]), headers)

    async def _body_part(self, message: AsgiMessage) -> None:
        if not self._started or self._complete:
            raise RuntimeError("http.response.body outside a response")
        body: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        self._sent += len(body)
        declared = self._declared_length
        if declared >= 0 and self._sent > declared:
            raise RuntimeError(f"the response body is longer than its Content-Length ({declared})")
        self._complete = not more
        if self._ended:
            return
        sink = self.sink
        if body:
            sink.on_response_body(body)
        if more:
            sink.on_response_flush()
            await self._writable.wait()
        elif declared >= 0 and self._sent < declared:
            self._fail(f"the response body is shorter than its Content-Length ({declared})")
        else:
            sink.on_response_complete(True)  # (which flushes)
