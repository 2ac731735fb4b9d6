"""`agentcell fn` and `agentcell session` as subprocesses against a real server (`server_url`): the
issue's quickstart as written, with tests/fixtures/echo_fn as the agent."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH
from tests.integration.test_cli import agentcell, ok

ECHO_FN = str(Path(__file__).resolve().parent.parent / "fixtures" / "echo_fn")
SESSION_HEADER = "x-agentcell-session-id"


def whoami(server_url: str, fn: str, key: str) -> dict[str, Any]:
    reply = httpx.get(f"{server_url}/fn/{fn}/whoami", headers={SESSION_HEADER: key, **AUTH}, timeout=60)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


@pytest.fixture
def chat(server_url: str) -> Iterator[str]:
    """The quickstart's deploy, under a unique name; removed afterwards."""
    name = "chat-" + uuid.uuid4().hex[:8]
    out = ok(
        server_url, "fn", "deploy", ECHO_FN, "--name", name, "--cmd", "python3 app.py",
        "--affinity", "header", "--sessions-per-instance", "1", "--session-ttl", "6h",
        "--idle-timeout", "15m", "--min-warm", "2",
    )  # fmt: skip
    assert out == f"deployed {name} version 1: {server_url}/fn/{name}/\n"
    yield name
    agentcell(server_url, "fn", "rm", name)


def test_quickstart_affinity(server_url: str, chat: str) -> None:
    """Same key, same instance with its memory; another key, another instance."""
    first = whoami(server_url, chat, "alice-1")
    again = whoami(server_url, chat, "alice-1")
    bob = whoami(server_url, chat, "bob-7")
    assert first["instance"] == again["instance"] and again["count"] == first["count"] + 1
    assert bob["instance"] != first["instance"]


def test_quickstart_session_lifecycle(server_url: str, chat: str) -> None:
    """`session create --key k` binds an instance the key's requests then reach; create prints its
    id (for `id=$(…)`); renew keeps the instance; ls lists; rm ends it (get shows why)."""
    session_id = ok(server_url, "session", "create", chat, "--key", "k", "--metadata", "t=1").strip()
    assert session_id.startswith("ses_") and len(session_id.split()) == 1
    bound = json.loads(ok(server_url, "session", "get", session_id))
    assert bound["key"] == "k"
    assert json.loads(ok(server_url, "session", "get", session_id, "--json"))["id"] == session_id
    assert whoami(server_url, chat, "k")["instance"] == bound["instance_id"]

    pre_warmed = json.loads(ok(server_url, "session", "create", chat, "--ttl", "1h", "--json"))
    assert pre_warmed["instance_id"] and pre_warmed["ttl_s"] == 3600
    renewed = json.loads(
        ok(server_url, "session", "renew", pre_warmed["id"], "--idle-timeout", "2h", "--json")
    )
    assert (renewed["idle_timeout_s"], renewed["instance_id"]) == (7200, pre_warmed["instance_id"])

    table = ok(server_url, "session", "ls", chat).splitlines()
    assert {line.split()[0] for line in table[1:]} >= {session_id, pre_warmed["id"]}
    assert ok(server_url, "session", "rm", pre_warmed["id"]) == ""
    ended = json.loads(ok(server_url, "session", "get", pre_warmed["id"]))
    assert (ended["state"], ended["end_reason"]) == ("ended", "deleted")
    listed = json.loads(ok(server_url, "session", "ls", chat, "--json"))
    assert pre_warmed["id"] not in [s["id"] for s in listed]


def test_function_commands(server_url: str, chat: str, tmp_path: Path) -> None:
    """ls shows the function with its URL, get its config; a tarball redeploy is version 2; rm
    removes it, after which get fails with exit 1."""
    line = next(line for line in ok(server_url, "fn", "ls").splitlines() if line.startswith(chat + " "))
    assert line.split()[1:3] == ["1", "header"] and line.endswith(f"/fn/{chat}/")
    config = json.loads(ok(server_url, "fn", "get", chat))["config"]
    assert (config["session_ttl_s"], config["idle_timeout_s"], config["min_warm"]) == (21600, 900, 2)
    assert json.loads(ok(server_url, "fn", "get", chat, "--json"))["config"] == config
    assert chat in {f["name"] for f in json.loads(ok(server_url, "fn", "ls", "--json"))}
    tarball = tmp_path / "echo.tar"
    subprocess.run(["tar", "-cf", str(tarball), "-C", ECHO_FN, "app.py"], check=True)
    redeployed = json.loads(
        ok(server_url, "fn", "deploy", str(tarball), "--name", chat, "--cmd", "python3 app.py", "--json")
    )
    assert redeployed["version"] == 2
    assert ok(server_url, "fn", "rm", chat) == ""
    gone = agentcell(server_url, "fn", "get", chat)
    assert gone.returncode == 1 and gone.stderr == f"error: function {chat!r} not found; deploy it first\n"


def test_bad_input_is_a_usage_error_or_an_error_line(server_url: str) -> None:
    """Bad durations and choices exit 2 saying what to write; server refusals exit 1 with `error:`."""
    bad_ttl = agentcell(server_url, "session", "create", "chat", "--ttl", "6hours")
    assert bad_ttl.returncode == 2 and "90s, 15m, 6h, 2d, 1h30m" in bad_ttl.stderr
    bad_affinity = agentcell(
        server_url, "fn", "deploy", ECHO_FN, "--name", "x", "--cmd", "y", "--affinity", "ip"
    )
    assert bad_affinity.returncode == 2 and "'ip' is not one of" in bad_affinity.stderr
    unknown = agentcell(server_url, "session", "ls", "no-such-fn")
    assert (unknown.returncode, unknown.stderr) == (
        1,
        "error: function 'no-such-fn' not found; deploy it first\n",
    )


def test_a_stdio_mcp_server_deploys_with_its_process_policy(server_url: str) -> None:
    name = "mcp-cli-" + uuid.uuid4().hex[:8]
    fixture = str(Path(ECHO_FN).parent / "mcp_stdio")
    out = ok(
        server_url, "fn", "deploy", fixture, "--name", name, "--stdio", "python3 server.py",
        "--affinity", "mcp", "--stdio-process", "shared", "--sessions-per-instance", "4", "--json",
    )  # fmt: skip
    try:
        config = json.loads(out)["config"]
        assert (config["stdio"], config["stdio_process"]) == ("python3 server.py", "shared")
    finally:
        agentcell(server_url, "fn", "rm", name)
    refused = agentcell(
        server_url, "fn", "deploy", fixture, "--name", name, "--cmd", "y", "--stdio-process", "shared"
    )
    assert refused.returncode == 1 and "stdio_process applies to a stdio MCP server" in refused.stderr
