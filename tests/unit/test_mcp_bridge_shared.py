"""The shared stdio process's renumbering (mcp_bridge.SharedProcess) against a fake process: what
the server is sent for each session's messages, and which session gets each of its messages.
The whole path, with a real process and the official client, is tests/integration/
test_mcp_stdio_shared.py. Also: a batch a real process writes is handed on message by message."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, cast

import pytest

from agentcell.server.scheduler.mcp_bridge.bridge import SessionGone, SharedProcess, StdioProcess


class FakeProcess:
    """Records what the bridge writes; `say` is the server writing a message."""

    def __init__(self, command: str) -> None:
        self.written: list[Any] = []
        self.exited = False
        self.receive: Callable[[Any], None] = lambda message: None
        self.end: Callable[[], None] = lambda: None

    def start(self, receive: Callable[[Any], None], exited: Callable[[], None]) -> None:
        self.receive, self.end = receive, exited

    def write(self, message: Any) -> None:
        if self.exited:
            raise SessionGone("exited")
        self.written.append(message)

    @property
    def has_exited(self) -> bool:
        return self.exited

    def say(self, message: Any) -> None:
        self.receive(message)

    def exit(self) -> None:
        self.exited = True
        self.end()


@pytest.fixture
def shared() -> SharedProcess:
    return SharedProcess("server", spawn=cast(Callable[[str], StdioProcess], FakeProcess))


def process_of(shared: SharedProcess) -> FakeProcess:
    return cast(FakeProcess, shared.process)


def request(request_id: Any, method: str = "tools/call", **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def events(session: Any) -> list[Any]:
    return [json.loads(data) for _, data in session.events]


def test_clashing_ids_and_progress_tokens_are_renumbered_and_given_back(shared: SharedProcess) -> None:
    alice, bob = shared.open(), shared.open()
    server = process_of(shared)
    for session in (alice, bob):
        session.expect(["1"])
        shared.send(session, request(1, name="slow", _meta={"progressToken": "t"}))
    (to_alice, to_bob) = server.written
    assert to_alice["id"] != to_bob["id"] != 1
    assert to_alice["params"]["_meta"]["progressToken"] != to_bob["params"]["_meta"]["progressToken"]
    for sent, done in ((to_bob, 0.5), (to_alice, 0.25)):
        token = sent["params"]["_meta"]["progressToken"]
        server.say(
            {
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {"progressToken": token, "progress": done},
            }
        )
    server.say({"jsonrpc": "2.0", "id": to_bob["id"], "result": {"who": "bob"}})
    assert bob.responses(["1"]) == [{"jsonrpc": "2.0", "id": 1, "result": {"who": "bob"}}]
    assert [e["params"] for e in events(alice)] == [{"progressToken": "t", "progress": 0.25}]
    assert [e["params"] for e in events(bob)] == [{"progressToken": "t", "progress": 0.5}]
    assert alice.waiting == {"1": None}  # still waiting for its own answer


def test_initialize_is_sent_once_and_its_answer_kept_for_later_sessions(shared: SharedProcess) -> None:
    alice, bob, carol = shared.open(), shared.open(), shared.open()
    server = process_of(shared)
    shared.send(alice, request("a", "initialize"))
    shared.send(bob, request("b", "initialize"))  # while the first is in flight
    (sent,) = server.written
    server.say({"jsonrpc": "2.0", "id": sent["id"], "result": {"serverInfo": {"name": "s"}}})
    shared.send(carol, request("c", "initialize"))
    for session in (alice, bob, carol):
        shared.send(session, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert [m.get("method") for m in server.written] == ["initialize", "notifications/initialized"]
    for session, theirs in ((alice, "a"), (bob, "b"), (carol, "c")):
        assert [(e["id"], e["result"]) for e in events(session)] == [(theirs, {"serverInfo": {"name": "s"}})]


def test_a_batch_is_forwarded_as_a_batch_and_a_cancel_names_the_renumbered_request(
    shared: SharedProcess,
) -> None:
    alice = shared.open()
    server = process_of(shared)
    shared.send(alice, [request(7), request(8)])
    (batch,) = server.written
    assert [m["method"] for m in batch] == ["tools/call", "tools/call"] and batch[0]["id"] != 7
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 8}}
    shared.send(alice, cancel)
    assert server.written[-1]["params"]["requestId"] == batch[1]["id"]
    shared.send(shared.open(), cancel)  # another session cannot cancel alice's request
    assert len(server.written) == 2


def test_requests_of_the_server_are_answered_by_whom_they_went_to(shared: SharedProcess) -> None:
    alice, bob = shared.open(), shared.open()
    server = process_of(shared)
    server.say(request("srv-1", "roots/list"))  # no request in flight: the newest session
    (asked,) = events(bob)
    shared.send(alice, {"jsonrpc": "2.0", "id": asked["id"], "result": {"roots": []}})
    assert server.written == []  # alice was not asked: her answer does not count
    shared.send(bob, {"jsonrpc": "2.0", "id": asked["id"], "result": {"roots": []}})
    assert server.written == [{"jsonrpc": "2.0", "id": "srv-1", "result": {"roots": []}}]
    server.say({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
    assert events(alice)[-1]["method"] == events(bob)[-1]["method"] == "notifications/tools/list_changed"


def test_an_ended_session_s_open_requests_are_refused_to_the_server(shared: SharedProcess) -> None:
    alice = shared.open()
    server = process_of(shared)
    server.say(request("srv-1", "sampling/createMessage"))
    shared.detach(alice)
    assert server.written[-1]["id"] == "srv-1" and "ended" in server.written[-1]["error"]["message"]
    server.say(request("srv-2", "roots/list"))  # nobody left to ask
    assert server.written[-1]["id"] == "srv-2" and "no MCP client" in server.written[-1]["error"]["message"]


def test_the_process_exiting_ends_every_session_and_the_next_starts_another(shared: SharedProcess) -> None:
    alice, bob = shared.open(), shared.open()
    first = process_of(shared)
    first.exit()
    assert alice.is_over and bob.is_over
    with pytest.raises(SessionGone):
        shared.send(alice, request(1))
    carol = shared.open()
    assert process_of(shared) is not first and not carol.is_over


def test_a_batch_the_server_writes_is_handed_on_message_by_message() -> None:
    answers = '[{"jsonrpc": "2.0", "id": 1, "result": {}}, {"jsonrpc": "2.0", "id": 2, "result": {}}]'
    process = StdioProcess(f"echo '{answers}'")
    received: list[Any] = []
    ended = threading.Event()
    process.start(received.append, ended.set)
    assert ended.wait(10)
    assert [message["id"] for message in received] == [1, 2]
    process.stop()


class RefusingProcess(FakeProcess):
    """A server that answers `initialize` with an error."""

    def write(self, message: Any) -> None:
        super().write(message)
        if message.get("method") == "initialize":
            self.say({"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32600, "message": "no"}})


def test_a_process_that_refuses_the_bridge_s_initialize_keeps_no_session() -> None:
    shared = SharedProcess("server", spawn=cast(Callable[[str], StdioProcess], RefusingProcess))
    with pytest.raises(ConnectionError, match="refused to initialize"):
        shared.open_stateless()
    assert shared.sessions == []
