"""Request body limits: JSON bodies are small; file bodies are bounded by the sandbox's disk, and a
deploy's code archive by its route (MAX_ARCHIVE_BYTES in api/functions.py).

A JSON body is held in memory whole until its request is answered, and a client may stop sending
one halfway for as long as it keeps the connection: past their first FREE_BODY_BYTES, the bodies
held at once share a budget (HELD_BODIES_PER_BUDGET of the largest), and a body that would go
over it is a 503. Without it, each connection of one client stalled short of the end of a 32 MiB
body held ~28 MB of the server's memory for as long as it liked, up to the per-address cap of
1000 connections (~27 GiB)."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentcell.errors import PayloadTooLarge, Unavailable

FUNCTIONS_PREFIX = "/v1/functions/"
FREE_BODY_BYTES = 64 << 10
HELD_BODIES_PER_BUDGET = 8
SANDBOX_FILES = re.compile(r"/v1/sandboxes/[^/]+/files(/upload)?")
E2B_FILES = re.compile(r"/e2b(/_sandbox/[^/]+|/_signed)?/files")
"""envd's file transfer under the E2B mount: the sandbox named in the path (host form, signed URL)
or, for a bare `/e2b/files`, in the E2b-Sandbox-Id header (without it the request is the control
API's, which reads its body whole)"""


def is_streamed(scope: Scope) -> bool:
    """Bodies that carry files, bounded where they are read rather than here: sandbox files, a
    deploy (`PUT /v1/functions/{name}`) and E2B's envd files. Matched whole: an id or name that
    merely ends the path in `/files` (`PATCH /v1/sessions/files`) gets no exemption, or the lean
    path would read a body of any size into memory."""
    path: str = scope["path"]
    if SANDBOX_FILES.fullmatch(path):
        return True
    if found := E2B_FILES.fullmatch(path):
        return found.group(1) is not None or any(name == b"e2b-sandbox-id" for name, _ in scope["headers"])
    name = path.removeprefix(FUNCTIONS_PREFIX)
    return scope["method"] == "PUT" and name != path and "/" not in name


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, max_held_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_held_bytes = max_held_bytes or HELD_BODIES_PER_BUDGET * max_bytes
        self.held_bytes = 0
        """counted bytes of the JSON bodies of requests not yet answered"""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_streamed(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        charged = [0]
        try:
            await self.app(scope, self._counting(receive, charged), send)
        finally:
            self.held_bytes -= charged[0]

    def _counting(self, receive: Receive, charged: list[int]) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise PayloadTooLarge(self._message())
            self._charge(max(0, seen - FREE_BODY_BYTES) - charged[0])
            charged[0] = max(0, seen - FREE_BODY_BYTES)
            return message

        return counted

    def _charge(self, size: int) -> None:
        if size > 0 and self.held_bytes + size > self.max_held_bytes:
            raise Unavailable(
                f"the server holds {self.max_held_bytes >> 20} MiB of large request bodies already; "
                "retry shortly, or send files through the files API",
                retry_after_s=1,
            )
        self.held_bytes += size

    def _message(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes; send files through the files API"

    async def _refuse(self, send: Send) -> None:
        from agentcell.server.api.errors import error_response

        response = error_response("payload_too_large", self._message())
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})
