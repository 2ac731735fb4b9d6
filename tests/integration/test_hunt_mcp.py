"""agentcell's own MCP server under a careless agent: arguments the REST API refuses are refused
here too, answers stay bounded, and an oversized request is a JSON-RPC error that says what to do."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from mcp import Client

from agentcell.server.api.mcp import MAX_OUTPUT_CHARS, MAX_REQUEST_BYTES
from tests.conftest import AUTH
from tests.integration.test_mcp import INIT, JSON_AND_SSE, streamable


@contextlib.asynccontextmanager
async def sandbox_session(server_url: str) -> AsyncIterator[tuple[Client, str]]:
    """An MCP client and a sandbox it made, killed afterwards (in the test's own task: the
    client's cancel scopes cannot cross into a fixture's)."""
    async with Client(streamable(f"{server_url}/mcp")) as client:
        created = await client.call_tool("create_sandbox", {"timeout_s": 120})
        sid: str = json.loads(created.content[0].text)["id"]  # type: ignore[union-attr]
        try:
            yield client, sid
        finally:
            await client.call_tool("kill_sandbox", {"sandbox_id": sid})


def text_of(result: Any) -> str:
    return "".join(getattr(item, "text", "") for item in result.content)


async def test_set_sandbox_timeout_takes_the_rest_api_s_range(server_url: str) -> None:
    """timeout_s out of 1..604800 is a tool error naming the range, and the sandbox is untouched.
    The tool took any number: 10**12 left a deadline that every later read of the sandbox failed
    on (GET and the listing answered 500), 10**9 kept it running for 31 years."""
    async with (
        sandbox_session(server_url) as (client, sandbox_id),
        httpx.AsyncClient(base_url=server_url, headers=AUTH) as api,
    ):
        before = (await api.get(f"/v1/sandboxes/{sandbox_id}")).json()["expires_at"]
        for timeout_s in (10**12, 10**9, 0, -5):
            refused = await client.call_tool(
                "set_sandbox_timeout", {"sandbox_id": sandbox_id, "timeout_s": timeout_s}
            )
            assert refused.is_error, (timeout_s, refused)
            assert "604800" in text_of(refused) or "greater than or equal to 1" in text_of(refused), text_of(
                refused
            )
        after = await api.get(f"/v1/sandboxes/{sandbox_id}")
        assert after.status_code == 200 and after.json()["expires_at"] == before, after.text
        assert (await api.get("/v1/sandboxes")).status_code == 200
        renewed = await client.call_tool("set_sandbox_timeout", {"sandbox_id": sandbox_id, "timeout_s": 600})
        assert not renewed.is_error, renewed


async def test_run_code_answers_a_bounded_output(server_url: str) -> None:
    """A cell's stream output comes back as one item per stream, its head and its tail, as
    `run_command` keeps them; results follow. It came back as an item per kernel message: a loop
    of flushed prints answered thousands of items, a long line all of it."""
    code = (
        "import sys\n"
        "print('start')\n"
        "for i in range(2000):\n"
        "    print(i, flush=True)\n"
        "print('y' * 1_000_000)\n"
        "print('oops', file=sys.stderr)\n"
        "'done'"
    )
    async with sandbox_session(server_url) as (client, sandbox_id):
        answer = await client.call_tool("run_code", {"sandbox_id": sandbox_id, "code": code})
    assert not answer.is_error, answer
    texts = [getattr(item, "text", "") for item in answer.content]
    assert len(texts) == 3, [t[:40] for t in texts]
    stdout, stderr, result = texts
    assert stdout.startswith("[stdout] start\n0\n1\n") and stdout.endswith("yyy\n"), stdout[:40]
    assert "characters of output left out here]" in stdout
    assert len(stdout) < MAX_OUTPUT_CHARS + 200
    assert (stderr, result) == ("[stderr] oops\n", "'done'")


def test_an_oversized_request_is_a_json_rpc_error_saying_what_to_do(server_url: str) -> None:
    """A write_file past the transport's 4 MiB request limit got a bare `Request body too large`
    text; it is a JSON-RPC error naming the limit and the files API."""
    with httpx.Client(base_url=server_url, headers={**AUTH, **JSON_AND_SSE}, timeout=60) as api:
        init = api.post("/mcp", json=INIT)
        assert init.status_code == 200, init.text
        session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        arguments = {"sandbox_id": "sbx_0", "path": "big.txt", "text": "a" * MAX_REQUEST_BYTES}
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "write_file", "arguments": arguments},
        }
        reply = api.post("/mcp", json=call, headers=session)
        assert reply.status_code == 413, reply.text[:200]
        error = reply.json()["error"]
        assert error["code"] == -32600 and str(MAX_REQUEST_BYTES) in error["message"], error
        assert "files API" in error["message"]
        tools = api.post("/mcp", json={"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, headers=session)
        assert tools.status_code == 200 and "write_file" in tools.text  # the session goes on


def sse_result(reply: httpx.Response) -> Any:
    for line in reply.text.splitlines():
        if line.startswith("data:"):
            return json.loads(line[5:])
    return reply.json()


def test_a_cancelled_run_code_stops_its_execution(server_url: str) -> None:
    """notifications/cancelled for a `run_code` interrupts the kernel, as a REST client that goes
    away does: the code went on running, and the context's next run waited for it to finish."""
    with httpx.Client(base_url=server_url, headers={**AUTH, **JSON_AND_SSE}, timeout=60) as api:
        init = api.post("/mcp", json=INIT)
        session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}

        def call(call_id: int, name: str, **arguments: Any) -> Any:
            request = {"name": name, "arguments": arguments}
            message = {"jsonrpc": "2.0", "id": call_id, "method": "tools/call", "params": request}
            return sse_result(api.post("/mcp", json=message, headers=session))

        sandbox_id = json.loads(call(2, "create_sandbox", timeout_s=120)["result"]["content"][0]["text"])[
            "id"
        ]
        try:
            with ThreadPoolExecutor(1) as pool:
                slow = pool.submit(
                    call, 3, "run_code", sandbox_id=sandbox_id, code="import time; time.sleep(60)"
                )
                contexts = f"/v1/sandboxes/{sandbox_id}/code/contexts"
                while [c["state"] for c in api.get(contexts).json()["contexts"]] != ["busy"]:
                    time.sleep(0.02)
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}}
                assert api.post("/mcp", json=cancel, headers=session).status_code == 202
                assert slow.result()["error"]["message"] == "Request cancelled"
            answer = call(4, "run_code", sandbox_id=sandbox_id, code="6 * 7", timeout_s=10)["result"]
            assert not answer["isError"] and answer["content"][0]["text"] == "42", answer
        finally:
            call(5, "kill_sandbox", sandbox_id=sandbox_id)
