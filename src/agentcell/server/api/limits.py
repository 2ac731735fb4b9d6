"""Request body limits: JSON bodies are small; file bodies are bounded by the sandbox's disk, and a
deploy's code archive by its route (MAX_ARCHIVE_BYTES in api/functions.py)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentcell.errors import PayloadTooLarge

STREAMED_SUFFIXES = ("/files", "/files/upload")
FUNCTIONS_PREFIX = "/v1/functions/"


def is_streamed(scope: Scope) -> bool:
    """Bodies that carry files, bounded where they are read rather than here: sandbox files, and a
    deploy (`PUT /v1/functions/{name}`)."""
    path: str = scope["path"]
    if path.endswith(STREAMED_SUFFIXES):
        return True
    name = path.removeprefix(FUNCTIONS_PREFIX)
    return scope["method"] == "PUT" and name != path and "/" not in name


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_streamed(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise PayloadTooLarge(self._message())
            return message

        return counted

    def _message(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes; send files through the files API"

    async def _refuse(self, send: Send) -> None:
        from agentcell.server.api.errors import error_response

        response = error_response("payload_too_large", self._message())
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})
