"""agentcell's own /mcp: an MCP session is served only to the API key that opened it."""

from __future__ import annotations

import itertools
from typing import Any

from starlette.types import Message

from agentcell.server.api.mcp import SessionOwners
from agentcell.server.auth.principal import Principal, acting_as

ALICE = Principal("alice", "key_a", frozenset({"*"}))
ALICE_2 = Principal("alice", "key_a2", frozenset({"*"}))
BOB = Principal("bob", "key_b", frozenset({"*"}))


class FakeMcpApp:
    """Issues a session on every request without one; knows every session it issued."""

    def __init__(self) -> None:
        self.ids = (f"s{n}" for n in itertools.count())
        self.served: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        session_id = headers.get(b"mcp-session-id", b"").decode() or next(self.ids)
        self.served.append(session_id)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"mcp-session-id", session_id.encode())],
            }
        )
        await send({"type": "http.response.body", "body": b""})


async def request(
    app: SessionOwners, who: Principal, session_id: str | None = None, method: str = "POST"
) -> int:
    headers = [] if session_id is None else [(b"mcp-session-id", session_id.encode())]
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    with acting_as(who):
        await app({"type": "http", "method": method, "headers": headers}, receive, send)
    return int(sent[0]["status"])


async def test_only_the_opening_key_reaches_its_session() -> None:
    inner = FakeMcpApp()
    app = SessionOwners(inner)
    assert await request(app, ALICE) == 200  # opens s0
    assert await request(app, BOB, "s0") == 404
    assert await request(app, ALICE_2, "s0") == 404  # same tenant, another key: it would act as key_a
    assert await request(app, BOB, "s0", "DELETE") == 404
    assert await request(app, ALICE, "s0") == 200
    assert inner.served == ["s0", "s0"]  # the refused requests never reached the server
    assert await request(app, ALICE, "s0", "DELETE") == 200
    assert await request(app, ALICE, "s0") == 404  # forgotten once deleted


async def test_past_the_limit_the_oldest_session_is_refused_not_opened_up() -> None:
    app = SessionOwners(FakeMcpApp(), max_sessions=2)
    for _ in range(3):
        await request(app, ALICE)
    assert await request(app, ALICE, "s0") == 404
    assert await request(app, BOB, "s0") == 404
    assert await request(app, ALICE, "s2") == 200
