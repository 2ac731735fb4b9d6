"""Billing of MCP's stateless (modern-era) requests through the gateway, on the real server: an MCP
function whose one instance holds a session and also answers a stateless request. The request's
time is the instance's active time (a usage line with no session), not the session's idle time;
the session and the instance together are billed for the instance's time once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import deploy

SERVER = '''"""Streamable HTTP MCP on $PORT: handshake-era sessions, and modern-era requests with none.
Tools: whoami -> {"instance": ...}; sleep(s) -> answers after s seconds."""
import json, os, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LEGACY = {"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"}
SESSIONS = set()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, body, session_id=None):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if session_id:
            self.send_header("mcp-session-id", session_id)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        stateless = self.headers.get("mcp-protocol-version") not in LEGACY
        session_id = None if stateless else self.headers.get("mcp-session-id")
        if not stateless and request["method"] == "initialize":
            session_id = uuid.uuid4().hex
            SESSIONS.add(session_id)
            self._reply({"jsonrpc": "2.0", "id": request["id"], "result": {"protocolVersion": "2025-11-25",
                         "capabilities": {"tools": {}}, "serverInfo": {"name": "billing", "version": "1"}}},
                        session_id)
            return
        params = request.get("params") or {}
        if params.get("name") == "sleep":
            time.sleep(float(params["arguments"]["s"]))
        who = {"instance": os.environ.get("AGENTCELL_INSTANCE_ID")}
        result = {"content": [{"type": "text", "text": json.dumps(who)}], "isError": False}
        self._reply({"jsonrpc": "2.0", "id": request["id"], "result": result}, session_id)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''
FN: dict[str, Any] = {
    "cmd": "python3 server.py",
    "affinity": {"kind": "mcp"},
    "sessions_per_instance": 2,
    "max_instances": 1,
    "idle_timeout_s": 600,
    "ready_timeout_s": 30,
    "cpu": 1,
    "memory_mb": 256,
}
JSON_AND_SSE = {"accept": "application/json, text/event-stream"}
LEGACY = {**JSON_AND_SSE, "mcp-protocol-version": "2025-11-25"}
MODERN = {**JSON_AND_SSE, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}
STATELESS_S = 1.5


@pytest.fixture
def mcp_fn(api: httpx.Client, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "server.py").write_text(SERVER)
    name = "billing-" + uuid.uuid4().hex[:8]
    reply = deploy(api, name, FN, code=tmp_path)
    assert reply.status_code == 200, reply.text
    yield name
    api.delete(f"/v1/functions/{name}")


def call(api: httpx.Client, url: str, headers: dict[str, str], tool: str, **arguments: object) -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    reply = api.post(url, json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    return str(json.loads(reply.json()["result"]["content"][0]["text"])["instance"])


def test_a_stateless_request_is_the_instance_s_active_time_not_the_session_s_idle(
    api: httpx.Client, mcp_fn: str
) -> None:
    url = f"/fn/{mcp_fn}/mcp"
    opened = time.monotonic()
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
    reply = api.post(url, json=init, headers=LEGACY)
    assert reply.status_code == 200, reply.text
    session = {**LEGACY, "mcp-session-id": reply.headers["mcp-session-id"]}
    instance = call(api, url, session, "whoami")

    assert call(api, url, MODERN, "sleep", s=STATELESS_S) == instance  # the session's instance
    lines = api.get("/v1/usage", params={"by": "session"}).json()["lines"]
    elapsed = time.monotonic() - opened
    mine = [line for line in lines if line["function"] == mcp_fn]
    [own] = [line for line in mine if line["session_key"] is None]  # the instance's rows
    [bound] = [line for line in mine if line["session_key"] is not None]

    assert STATELESS_S - 0.1 <= own["active_s"] <= STATELESS_S + 1.0, own
    assert own["idle_s"] < 0.5, own
    assert bound["active_s"] < 1.0, bound  # initialize and whoami: not the stateless request
    session_s = bound["active_s"] + bound["idle_s"]
    assert session_s + own["active_s"] <= elapsed + 0.2  # each second of the instance once
    assert session_s <= elapsed - STATELESS_S + 0.2, (bound, elapsed)
    assert own["cost"] > 0 and own["memory_gib_s"] == pytest.approx(
        own["active_s"] * FN["memory_mb"] / 1024, rel=0.01, abs=1e-6
    )
