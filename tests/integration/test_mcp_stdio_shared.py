"""A stdio MCP server shared by the MCP sessions of an instance (`stdio_process: shared`), driven
by the official `mcp` client through the gateway: one process answers every session, each gets
its own answers (the sessions' JSON-RPC ids clash; the bridge renumbers them), a request of the
server reaches the session it works for, the process outlives a session that ends, and its exit
ends every session."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp import Client, types
from mcp.client.session import ClientRequestContext
from mcp.client.sse import sse_client

from tests.conftest import AUTH
from tests.integration.test_mcp import INIT, JSON_AND_SSE, deployed, live_keys, streamable, tool, wait_for

SHARED_FN: dict[str, Any] = {
    "stdio": "python3 server.py",
    "stdio_process": "shared",
    "affinity": {"kind": "mcp"},
    "sessions_per_instance": 8,
    "max_instances": 1,
    "idle_timeout_s": 600,
}
HANDSHAKE = {**JSON_AND_SSE, "mcp-protocol-version": "2025-11-25"}


@pytest.fixture
def shared_fn(api: httpx.Client) -> Iterator[str]:
    with deployed(api, "mcps-", SHARED_FN) as name:
        yield name


def roots_of(name: str) -> Any:
    async def list_roots(context: ClientRequestContext) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=f"file:///{name}", name=name)])

    return list_roots


async def test_one_process_answers_every_session_each_with_its_own_answers(
    api: httpx.Client, server_url: str, shared_fn: str
) -> None:
    url = f"{server_url}/fn/{shared_fn}"
    async with (
        Client(streamable(f"{url}/mcp"), mode="legacy") as alice,
        Client(streamable(f"{url}/mcp"), mode="legacy") as bob,
        Client(sse_client(f"{url}/sse", headers=AUTH), mode="legacy") as carol,
    ):
        clients = {"alice": alice, "bob": bob, "carol": carol}
        who = [await tool(client, "whoami") for client in clients.values()]
        assert len({(w["instance"], w["pid"]) for w in who}) == 1, who  # initialized once: no refusal
        calls = [(name, i) for i in range(8) for name in clients]
        answers = await asyncio.gather(
            *(tool(clients[name], "echo", text=f"{name}-{i}") for name, i in calls)
        )
        assert [a["echo"] for a in answers] == [f"{name}-{i}" for name, i in calls]
        await tool(alice, "remember", text="alice's note")
        assert await tool(bob, "recall") == ["alice's note"]  # one process: its state is everyone's
        assert len(live_keys(api, shared_fn)) == 3
    wait_for(lambda: not live_keys(api, shared_fn), what="the three sessions to end")


async def test_a_request_of_the_server_reaches_the_session_it_works_for(
    server_url: str, shared_fn: str
) -> None:
    url = f"{server_url}/fn/{shared_fn}/mcp"
    async with (
        Client(streamable(url), mode="legacy", list_roots_callback=roots_of("alice")) as alice,
        Client(streamable(url), mode="legacy", list_roots_callback=roots_of("bob")) as bob,
    ):
        for _ in range(3):
            alice_roots, bob_roots = await asyncio.gather(tool(alice, "roots"), tool(bob, "roots"))
            assert [r["name"] for r in alice_roots["roots"]] == ["alice"], alice_roots
            assert [r["name"] for r in bob_roots["roots"]] == ["bob"], bob_roots


def test_the_process_outlives_an_ended_session_and_its_exit_ends_all(
    api: httpx.Client, shared_fn: str
) -> None:
    path = f"/fn/{shared_fn}/mcp"

    def initialize() -> str:
        reply = api.post(path, json=INIT, headers=HANDSHAKE)
        assert reply.status_code == 200 and "result" in reply.json(), reply.text
        return reply.headers["mcp-session-id"]

    def call(session_id: str, name: str, request_id: int = 2) -> httpx.Response:
        message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": name}}
        return api.post(path, json=message, headers={**HANDSHAKE, "mcp-session-id": session_id})

    def pid(reply: httpx.Response) -> int:
        assert reply.status_code == 200, reply.text
        return int(json.loads(reply.json()["result"]["content"][0]["text"])["pid"])

    first, second, third = initialize(), initialize(), initialize()
    server_pid = pid(call(first, "whoami"))
    assert api.delete(path, headers={**HANDSHAKE, "mcp-session-id": first}).status_code == 200
    assert call(first, "whoami").status_code == 404
    assert pid(call(second, "whoami")) == server_pid  # the ended session took no process with it
    assert call(second, "exit").status_code == 200
    wait_for(lambda: call(third, "whoami").status_code == 404, what="the process's exit to end the session")
    assert call(second, "whoami").status_code == 404
    assert pid(call(initialize(), "whoami")) != server_pid  # a new session starts a new process


def test_modern_era_requests_share_the_process_too(api: httpx.Client, shared_fn: str) -> None:
    modern = {**JSON_AND_SSE, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "whoami"}}
    pids = set()
    for _ in range(3):
        reply = api.post(f"/fn/{shared_fn}/mcp", json=call, headers=modern)
        assert reply.status_code == 200 and "mcp-session-id" not in reply.headers, reply.text
        assert reply.json()["id"] == 5
        pids.add(json.loads(reply.json()["result"]["content"][0]["text"])["pid"])
    assert len(pids) == 1  # the bridge initialized the process once, for all of them
    handshake = api.post(f"/fn/{shared_fn}/mcp", json=INIT, headers=HANDSHAKE)
    assert handshake.status_code == 200, handshake.text  # answered with the kept result: no refusal
    assert handshake.json()["result"]["serverInfo"]["name"] == "fixture-stdio"
