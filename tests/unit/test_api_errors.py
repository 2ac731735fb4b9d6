"""The control plane's error envelope: the request id survives an unexpected failure, and a client
that leaves mid-body is no server error."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI, Request
from starlette.types import Message

from agentcell.server.api.errors import RequestIdMiddleware, install_error_handlers, request_id_var


def app() -> FastAPI:
    api = FastAPI()
    install_error_handlers(api)
    api.add_middleware(RequestIdMiddleware)

    @api.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @api.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"size": len(await request.body())}

    return api


class RequestIds(logging.Handler):
    """The request id each record was logged under."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), request_id_var.get()))


@pytest.fixture
def request_ids() -> Iterator[RequestIds]:
    handler = RequestIds()
    logger = logging.getLogger("agentcell.server.api.errors")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_an_unexpected_failure_answers_and_logs_under_the_request_id(request_ids: RequestIds) -> None:
    transport = httpx.ASGITransport(app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        reply = await client.get("/boom", headers={"x-request-id": "mine-42"})
    assert reply.status_code == 500
    assert reply.json() == {
        "code": "internal",
        "message": "the server failed to handle this request; see its log",
        "request_id": "mine-42",
    }
    assert ("unexpected error", "mine-42") in request_ids.seen


async def test_a_client_leaving_mid_body_is_no_server_error(request_ids: RequestIds) -> None:
    sent: list[Message] = []
    messages: Iterator[Message] = iter(
        [{"type": "http.request", "body": b"part", "more_body": True}, {"type": "http.disconnect"}]
    )

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/upload", "raw_path": b"/upload", "query_string": b"",
        "headers": [(b"content-length", b"100")], "client": ("127.0.0.1", 1), "server": ("t", 80),
    }  # fmt: skip
    await app()(scope, receive, send)  # returns: nothing is raised to the server
    assert sent[0]["type"] == "http.response.start"
    assert [m for m, _ in request_ids.seen] == ["the client left before sending its whole request"]
