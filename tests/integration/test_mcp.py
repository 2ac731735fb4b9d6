"""MCP hosting through the gateway, driven by the official `mcp` client against a stdio MCP server
bridged by agentcell, on a function with several instances: every request of one MCP session
reaches one instance (Streamable HTTP, legacy SSE, a GET stream resumed with Last-Event-ID),
sessions are isolated, unknown sessions answer 404, modern-era requests need no session."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from agentcell.server.api.mcp import MAX_OUTPUT_CHARS as MCP_OUTPUT_KEPT
from tests.conftest import AUTH
from tests.integration.conftest import FIXTURES, deploy

MCP_FN: dict[str, Any] = {
    "stdio": "python3 server.py",
    "affinity": {"kind": "mcp"},
    "min_warm": 2,
    "max_instances": 6,
    "idle_timeout_s": 600,
}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"},
    },
}
JSON_AND_SSE = {"accept": "application/json, text/event-stream"}
HTTP_MCP_FN: dict[str, Any] = {
    "cmd": "python3 http_server.py",
    "affinity": {"kind": "mcp"},
    "max_instances": 2,
    "idle_timeout_s": 600,
    "ready_timeout_s": 30,
}


@contextlib.contextmanager
def deployed(api: httpx.Client, prefix: str, config: dict[str, Any]) -> Iterator[str]:
    name = prefix + uuid.uuid4().hex[:8]
    reply = deploy(api, name, config, code=FIXTURES / "mcp_stdio")
    assert reply.status_code == 200, reply.text
    yield name
    api.delete(f"/v1/functions/{name}")


@pytest.fixture
def mcp_fn(api: httpx.Client) -> Iterator[str]:
    with deployed(api, "mcp-", MCP_FN) as name:
        yield name


@pytest.fixture
def http_mcp_fn(api: httpx.Client) -> Iterator[str]:
    """An HTTP MCP server (`http_server.py`, answering like the SDK's) on at most two instances."""
    with deployed(api, "mcph-", HTTP_MCP_FN) as name:
        yield name


@contextlib.asynccontextmanager
async def streamable(url: str) -> AsyncIterator[Any]:
    """The SDK's Streamable HTTP transport, sending this suite's agentcell key (an HTTP client of
    ours, so closed here: the transport leaves a client it was given open)."""
    async with (
        create_mcp_http_client(headers=AUTH) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


def live_keys(api: httpx.Client, fn: str) -> set[str]:
    return {s["key"] for s in api.get(f"/v1/functions/{fn}/sessions").json()["sessions"]}


def wait_for(condition: Callable[[], Any], timeout_s: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.05)


async def tool(client: Client, name: str, **arguments: Any) -> Any:
    result = await client.call_tool(name, arguments)
    assert not result.is_error, result
    return json.loads(result.content[0].text)  # type: ignore[union-attr]


async def instances_seen(client: Client, calls: int = 6) -> set[tuple[str, int]]:
    return {(who["instance"], who["pid"]) for who in [await tool(client, "whoami") for _ in range(calls)]}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_streamable_http_sessions_stay_on_one_instance(
    api: httpx.Client, server_url: str, mcp_fn: str, mode: str
) -> None:
    url = f"{server_url}/fn/{mcp_fn}/mcp"
    async with Client(streamable(url), mode=mode) as alice, Client(streamable(url), mode=mode) as bob:
        tools = {t.name for t in (await alice.list_tools()).tools}
        assert {"whoami", "remember", "recall"} <= tools
        seen_alice, seen_bob = await instances_seen(alice), await instances_seen(bob)
        assert len(seen_alice) == 1 and len(seen_bob) == 1, (seen_alice, seen_bob)
        assert seen_alice != seen_bob  # exclusive instances: one per MCP session
        await tool(alice, "remember", text="alice's secret")
        assert await tool(bob, "recall") == []
        assert await tool(alice, "recall") == ["alice's secret"]
        assert len(live_keys(api, mcp_fn)) == 2
    wait_for(lambda: not live_keys(api, mcp_fn), what="DELETE on close to end both sessions")


async def test_legacy_sse_sessions_stay_on_one_instance(
    api: httpx.Client, server_url: str, mcp_fn: str
) -> None:
    url = f"{server_url}/fn/{mcp_fn}/sse"
    async with (
        Client(sse_client(url, headers=AUTH), mode="legacy") as alice,
        Client(sse_client(url, headers=AUTH), mode="legacy") as bob,
    ):
        seen_alice, seen_bob = await instances_seen(alice), await instances_seen(bob)
        assert len(seen_alice) == 1 and len(seen_bob) == 1 and seen_alice != seen_bob
        await tool(bob, "remember", text="bob's")
        assert await tool(alice, "recall") == []
    wait_for(lambda: not live_keys(api, mcp_fn), what="closed SSE streams to end their sessions")


def test_a_get_stream_resumes_on_the_same_instance_with_last_event_id(api: httpx.Client, mcp_fn: str) -> None:
    url = f"/fn/{mcp_fn}/mcp"
    init = api.post(url, json=INIT, headers=JSON_AND_SSE)
    assert init.status_code == 200, init.text
    session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    headers = {**JSON_AND_SSE, **session}
    api.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)

    def notify(count: int, request_id: int) -> None:
        call = {"name": "notify", "arguments": {"count": count}}
        reply = api.post(
            url,
            json={"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": call},
            headers=headers,
        )
        assert reply.status_code == 200, reply.text

    def read_events(extra: dict[str, str], count: int) -> list[tuple[int, dict[str, Any]]]:
        events: list[tuple[int, dict[str, Any]]] = []
        with api.stream("GET", url, headers={**session, "accept": "text/event-stream", **extra}) as stream:
            assert stream.status_code == 200
            event_id = 0
            for line in stream.iter_lines():
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    events.append((event_id, json.loads(line[6:])))
                    if len(events) == count:
                        break
        return events

    notify(3, 2)
    with api.stream("GET", url, headers={**session, "accept": "text/event-stream"}) as dropped:
        # A stream the client left without the server noticing yet (its connection still open):
        # the resume replaces it at once, it does not get 409 for up to the keep-alive poll.
        assert dropped.status_code == 200
        first = read_events({}, 3)
    notify(2, 3)  # sent while no stream is open
    resumed = read_events({"last-event-id": str(first[-1][0])}, 2)
    assert [n for n, _ in resumed] == [first[-1][0] + 1, first[-1][0] + 2]
    instances = {e["params"]["data"]["instance"] for _, e in first + resumed}
    assert len(instances) == 1  # the replay came from the instance that holds the session
    assert api.delete(url, headers=session).status_code == 200
    assert api.post(url, json=INIT | {"id": 9}, headers=headers).status_code == 404


async def test_the_sdk_client_resumes_a_get_stream_the_bridge_ended(
    api: httpx.Client, server_url: str
) -> None:
    """The bridge ends GET streams after 1 s (MCP's SSE polling); the official client comes back
    with Last-Event-ID each time and gets every notification once, in order, from one instance."""
    resumed_from: list[str] = []
    notes: list[Any] = []

    async def record(request: Any) -> None:
        if request.method == "GET" and "last-event-id" in request.headers:
            resumed_from.append(request.headers["last-event-id"])

    async def logged(params: Any) -> None:
        notes.append(params.data)

    config = {**MCP_FN, "env": {"AGENTCELL_MCP_STREAM_MAX_S": "1"}}
    with deployed(api, "mcpr-", config) as fn:
        async with create_mcp_http_client(headers=AUTH) as http:
            http.event_hooks = {"request": [record], "response": []}
            transport = streamable_http_client(f"{server_url}/fn/{fn}/mcp", http_client=http)
            async with Client(transport, mode="legacy", logging_callback=logged) as client:
                sent, deadline = 0, time.monotonic() + 3.5  # three stream ends, and the gaps after them
                while time.monotonic() < deadline:
                    await tool(client, "notify", count=1, tag=sent)
                    sent += 1
                    await asyncio.sleep(0.02)
                for _ in range(100):
                    if len(notes) >= sent:
                        break
                    await asyncio.sleep(0.05)
    assert [note["tag"] for note in notes] == list(range(sent))  # none lost, none twice
    assert len(resumed_from) >= 2, resumed_from
    assert len({note["instance"] for note in notes}) == 1


def test_a_stdio_session_whose_process_exited_answers_404(api: httpx.Client, mcp_fn: str) -> None:
    url = f"/fn/{mcp_fn}/mcp"
    init = api.post(url, json=INIT, headers=JSON_AND_SSE)
    assert init.status_code == 200, init.text
    headers = {**JSON_AND_SSE, "mcp-session-id": init.headers["mcp-session-id"]}
    api.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)

    def call(name: str) -> httpx.Response:
        request = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": name}}
        return api.post(url, json=request, headers=headers)

    assert call("exit").status_code == 200
    gone = call("whoami")
    assert gone.status_code == 404, gone.text  # the MCP spec's answer: the client re-initializes
    wait_for(lambda: not live_keys(api, mcp_fn), what="the 404 to end the agentcell session")
    assert call("whoami").status_code == 404
    assert api.post(url, json=INIT, headers=JSON_AND_SSE).status_code == 200


def test_a_chunked_request_body_reaches_the_stdio_server(api: httpx.Client, mcp_fn: str) -> None:
    body = json.dumps(INIT).encode()
    chunked = api.post(f"/fn/{mcp_fn}/mcp", content=iter([body[:10], body[10:]]), headers=JSON_AND_SSE)
    assert chunked.status_code == 200, chunked.text
    assert chunked.json()["result"]["serverInfo"]["name"] == "fixture-stdio"
    assert (
        api.delete(
            f"/fn/{mcp_fn}/mcp", headers={"mcp-session-id": chunked.headers["mcp-session-id"]}
        ).status_code
        == 200
    )


def test_unknown_and_malformed_session_ids(api: httpx.Client, mcp_fn: str) -> None:
    url = f"/fn/{mcp_fn}/mcp"
    unknown = api.post(url, json=INIT, headers={**JSON_AND_SSE, "mcp-session-id": "0123abcd"})
    assert unknown.status_code == 404 and "initialize" in unknown.json()["message"]
    bad = api.post(url, json=INIT, headers={**JSON_AND_SSE, "mcp-session-id": "bad id"})
    assert bad.status_code == 400 and "mcp-session-id" in bad.json()["message"]
    assert api.post(f"/fn/{mcp_fn}/messages/?session_id=nope", json={}).status_code == 404


def test_bad_input_to_a_stdio_server_is_a_json_rpc_error_and_loses_nothing(
    api: httpx.Client, mcp_fn: str
) -> None:
    url = f"/fn/{mcp_fn}/mcp"
    init = api.post(url, json=INIT, headers=JSON_AND_SSE)
    session = {**JSON_AND_SSE, "mcp-session-id": init.headers["mcp-session-id"]}
    api.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    remember = {"name": "remember", "arguments": {"text": "kept"}}
    api.post(
        url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": remember}, headers=session
    )
    garbage = api.post(url, content=b"{not json", headers={**session, "content-type": "application/json"})
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == -32700, garbage.text
    for body in (b"[]", b"42"):
        refused = api.post(url, content=body, headers={**session, "content-type": "application/json"})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == -32600, refused.text
    huge = b'{"jsonrpc": "2.0", "id": 3, "method": "ping", "params": {"x": "' + b"a" * (17 << 20) + b'"}}'
    oversized = api.post(url, content=huge, headers={**session, "content-type": "application/json"})
    assert oversized.status_code == 413, oversized.text[:200]
    assert "at most 16777216" in oversized.json()["error"]["message"]
    again = api.post(url, content=b"[1]" * 1000, headers={**session, "content-type": "application/json"})
    assert again.status_code == 400, again.text  # the connection after it is not eaten by the refusal
    with deployed(api, "mcpf-", MCP_FN) as other:  # a session id of another function is unknown there
        foreign = api.post(f"/fn/{other}/mcp", json=INIT | {"id": 4}, headers=session)
        assert foreign.status_code == 404, foreign.text
    recall = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "recall"}}
    kept = api.post(url, json=recall, headers=session)
    assert kept.status_code == 200 and json.loads(kept.json()["result"]["content"][0]["text"]) == ["kept"]


@pytest.mark.parametrize("limits", [{"idle_timeout_s": 1}, {"session_ttl_s": 2}])
def test_an_expired_mcp_session_answers_404_and_a_new_one_starts(
    api: httpx.Client, limits: dict[str, int]
) -> None:
    """Idle timeout and TTL end an MCP session like any other; its id then answers 404 (the MCP
    answer that makes a client initialize again), never a new session under the old id."""
    with deployed(api, "mcpx-", {**MCP_FN, "min_warm": 0, **limits}) as fn:
        url = f"/fn/{fn}/mcp"
        init = api.post(url, json=INIT, headers=JSON_AND_SSE)
        session = {**JSON_AND_SSE, "mcp-session-id": init.headers["mcp-session-id"]}
        whoami = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami"}}

        def expired() -> bool:
            reply = api.post(url, json=whoami, headers=session)  # (keeps it busy: only the TTL ends it)
            assert reply.status_code in (200, 404), reply.text
            return reply.status_code == 404

        wait_for(expired if "session_ttl_s" in limits else lambda: not live_keys(api, fn), timeout_s=15)
        gone = api.post(url, json=whoami, headers=session)
        assert gone.status_code == 404 and "initialize" in gone.json()["message"], gone.text
        assert api.post(url, json=INIT, headers=JSON_AND_SSE).status_code == 200


def test_failed_requests_without_a_session_bind_nothing(api: httpx.Client, http_mcp_fn: str) -> None:
    """The server puts an Mcp-Session-Id even on its 400s: only a 2xx initialize names a session,
    so failed requests hold neither a session nor an instance once answered."""
    url = f"/fn/{http_mcp_fn}/mcp"
    tools_list = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode()
    for body in (tools_list, tools_list, b"garbage", b"[]", b""):
        reply = api.post(url, content=body, headers={**JSON_AND_SSE, "content-type": "application/json"})
        assert reply.status_code == 400, reply.text
    for method in ("GET", "DELETE"):
        assert api.request(method, url, headers=JSON_AND_SSE).status_code == 400
    assert live_keys(api, http_mcp_fn) == set()
    sessions = [api.post(url, json=INIT, headers=JSON_AND_SSE, timeout=8) for _ in range(2)]
    assert [s.status_code for s in sessions] == [200, 200]
    assert live_keys(api, http_mcp_fn) == {s.headers["mcp-session-id"] for s in sessions}


@pytest.mark.parametrize("session_id", ["c2Vzc2lvbi8xMjM+PzQ1Ng==", "eyJhbGciOiJIUzI1NiJ9." + "x" * 180])
def test_any_session_id_the_spec_allows_routes(api: httpx.Client, http_mcp_fn: str, session_id: str) -> None:
    url = f"/fn/{http_mcp_fn}/mcp"
    init = api.post(url, json=INIT, headers={**JSON_AND_SSE, "x-fixture-session-id": session_id})
    assert init.status_code == 200 and init.headers["mcp-session-id"] == session_id
    session = {**JSON_AND_SSE, "mcp-session-id": session_id}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami"}}
    answers = [api.post(url, json=call, headers=session) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200], answers[0].text
    assert len({a.json()["result"]["content"][0]["text"] for a in answers}) == 1  # one instance
    assert api.delete(url, headers=session).status_code == 200
    wait_for(lambda: not live_keys(api, http_mcp_fn), what="DELETE to end the session")


def test_modern_era_requests_go_anywhere_without_a_session(api: httpx.Client, mcp_fn: str) -> None:
    modern = {**JSON_AND_SSE, "mcp-protocol-version": "2026-07-28"}
    discover = {"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {}}
    reply = api.post(f"/fn/{mcp_fn}/mcp", json=discover, headers={**modern, "mcp-method": "server/discover"})
    assert reply.status_code == 200, reply.text  # answered by the server: it speaks the handshake era only
    assert reply.json()["error"]["code"] == -32601 and "mcp-session-id" not in reply.headers
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami"}}
    pids = set()
    for _ in range(4):
        reply = api.post(f"/fn/{mcp_fn}/mcp", json=call, headers={**modern, "mcp-method": "tools/call"})
        assert reply.status_code == 200, reply.text
        assert "mcp-session-id" not in reply.headers
        who = json.loads(reply.json()["result"]["content"][0]["text"])
        pids.add((who["instance"], who["pid"]))
    assert len(pids) == 4  # a process of its own for each: nothing is shared between requests
    assert live_keys(api, mcp_fn) == set()


def test_own_mcp_sessions_belong_to_the_key_that_opened_them(api: httpx.Client, server_url: str) -> None:
    tenant = "mcpt" + uuid.uuid4().hex[:8]
    assert api.post("/v1/tenants", json={"name": tenant}).status_code == 201
    other = api.post(f"/v1/tenants/{tenant}/keys", json={"scopes": ["*"]}).json()["key"]
    init = api.post("/mcp", json=INIT, headers=JSON_AND_SSE)
    assert init.status_code == 200, init.text
    mine = {
        **JSON_AND_SSE,
        "mcp-session-id": init.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    tools_list = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    with httpx.Client(base_url=server_url, headers={"x-api-key": other}, timeout=30) as intruder:
        assert intruder.post("/mcp", json=tools_list, headers=mine).status_code == 404
        assert intruder.delete("/mcp", headers=mine).status_code == 404
    listed = api.post("/mcp", json=tools_list, headers=mine)
    assert listed.status_code == 200 and "create_sandbox" in listed.text
    assert api.delete("/mcp", headers=mine).status_code == 200
    assert api.post("/mcp", json=tools_list, headers=mine).status_code == 404


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_agentcell_s_own_mcp_server(server_url: str, mode: str) -> None:
    """create sandbox → run a command → run code (state, a chart as an image) → files → kill."""
    async with Client(streamable(f"{server_url}/mcp"), mode=mode) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"create_sandbox", "run_command", "run_code", "read_file", "kill_sandbox"} <= tools
        created = await client.call_tool("create_sandbox", {"timeout_s": 120})
        sandbox_id = json.loads(created.content[0].text)["id"]  # type: ignore[union-attr]
        ran = await tool(client, "run_command", sandbox_id=sandbox_id, command="echo hi; exit 3")
        assert ran["stdout"] == "hi\n" and ran["exit_code"] == 3
        await client.call_tool("run_code", {"sandbox_id": sandbox_id, "code": "x = 6 * 7"})
        answer = await client.call_tool("run_code", {"sandbox_id": sandbox_id, "code": "x"})
        assert answer.content[0].text == "42"  # type: ignore[union-attr]
        chart = "import matplotlib.pyplot as plt; plt.plot([1, 2]); plt.show()"
        drawn = await client.call_tool("run_code", {"sandbox_id": sandbox_id, "code": chart})
        assert any(c.type == "image" and c.mime_type == "image/png" for c in drawn.content)
        await tool(client, "write_file", sandbox_id=sandbox_id, path="notes/a.txt", text="hello")
        read = await client.call_tool(
            "read_file", {"sandbox_id": sandbox_id, "path": "/home/user/notes/a.txt"}
        )
        assert read.content[0].text == "hello"  # type: ignore[union-attr]
        missing = await client.call_tool("read_file", {"sandbox_id": sandbox_id, "path": "nope.txt"})
        assert missing.is_error and "no such file" in missing.content[0].text  # type: ignore[union-attr]
        await client.call_tool("kill_sandbox", {"sandbox_id": sandbox_id})
        gone = await client.call_tool("run_command", {"sandbox_id": sandbox_id, "command": "true"})
        assert gone.is_error


async def test_own_mcp_run_command_keeps_a_bounded_output(server_url: str) -> None:
    """50 MB of stdout come back as the head and the tail of it, saying how much was left out;
    the whole output never sits in the server (it once answered 1.75 GB for 500 MB of output)."""
    async with Client(streamable(f"{server_url}/mcp")) as client:
        created = await client.call_tool("create_sandbox", {"timeout_s": 120})
        sandbox_id = json.loads(created.content[0].text)["id"]  # type: ignore[union-attr]
        try:
            command = "printf start; head -c 50000000 /dev/zero | tr '\\0' y; printf end; echo err >&2"
            ran = await tool(client, "run_command", sandbox_id=sandbox_id, command=command)
            assert ran["exit_code"] == 0 and ran["stderr"] == "err\n"
            stdout = ran["stdout"]
            assert stdout.startswith("start") and stdout.endswith("yend"), stdout[:50]
            assert len(stdout) < 300_000
            assert f"[agentcell: {50_000_008 - MCP_OUTPUT_KEPT} characters of output left out here]" in stdout
        finally:
            await client.call_tool("kill_sandbox", {"sandbox_id": sandbox_id})


async def test_own_mcp_kill_deletes_a_paused_sandbox(server_url: str) -> None:
    """As DELETE /v1/sandboxes/{id} does: a paused sandbox is deleted with its saved files (the
    tool once answered "not found" for it, and its snapshot stayed, counted against storage)."""
    async with httpx.AsyncClient(base_url=server_url, headers=AUTH, timeout=60) as api:
        sandbox_id = (await api.post("/v1/sandboxes", json={"timeout_s": 120})).json()["id"]
        paused = await api.post(f"/v1/sandboxes/{sandbox_id}/pause")
        assert paused.status_code == 200 and paused.json()["state"] == "paused", paused.text
        async with Client(streamable(f"{server_url}/mcp")) as client:
            killed = await client.call_tool("kill_sandbox", {"sandbox_id": sandbox_id})
            assert not killed.is_error, killed.content
        assert (await api.get(f"/v1/sandboxes/{sandbox_id}")).status_code == 404
        assert (await api.post(f"/v1/sandboxes/{sandbox_id}/resume")).status_code == 404
