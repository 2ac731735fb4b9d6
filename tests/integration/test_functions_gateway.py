"""Functions behind the gateway on the real server and Linux driver: affinity, session lifecycle,
streaming, failures, and bad input."""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import AUTH, ServerProcess
from tests.integration.conftest import deploy

ECHO = {"cmd": "python3 app.py", "idle_timeout_s": 600}


@pytest.fixture
def fn(api: httpx.Client) -> Iterator[str]:
    name = "echo-" + uuid.uuid4().hex[:8]
    reply = deploy(api, name, ECHO)
    assert reply.status_code == 200, reply.text
    yield name
    api.delete(f"/v1/functions/{name}")


def whoami(
    api: httpx.Client, fn: str, key: str | None, header: str = "x-agentcell-session-id"
) -> httpx.Response:
    headers = {header: key} if key else {}
    return api.get(f"/fn/{fn}/whoami", headers=headers)


def test_same_session_same_instance_with_memory_other_session_elsewhere(api: httpx.Client, fn: str) -> None:
    first = whoami(api, fn, "alice-1").json()
    again = whoami(api, fn, "alice-1").json()
    bob = whoami(api, fn, "bob-7").json()
    assert first["instance"] == again["instance"] and again["count"] == first["count"] + 1
    assert bob["instance"] != first["instance"]
    assert first["forwarded_for"] == "127.0.0.1"
    assert first["path"] == "/whoami"


def test_the_access_log_names_function_session_and_instance(
    api: httpx.Client, fn: str, shared_server: ServerProcess
) -> None:
    """One line per request, with the ids an operator follows a request and a session by (default
    level INFO): the request id is the one the function and the control plane got."""
    trace = "trace-" + uuid.uuid4().hex[:12]
    reply = api.get(f"/fn/{fn}/whoami", headers={"x-agentcell-session-id": "logged-1", "x-request-id": trace})
    assert reply.json()["request_id"] == trace and reply.headers["x-request-id"] == trace
    instance = reply.json()["instance"]
    listed = api.get(f"/v1/functions/{fn}/sessions", headers={"x-request-id": trace + "-ls"})
    assert listed.headers["x-request-id"] == trace + "-ls"
    session = next(s["id"] for s in listed.json()["sessions"] if s["key"] == "logged-1")
    wanted = [
        (f"[{trace} {session} {instance}]: ", f'"GET /fn/{fn}/whoami" 200 ', f"fn={fn}"),
        (f"[{trace}-ls - -]: ", f'"GET /v1/functions/{fn}/sessions" 200 '),
    ]
    deadline = time.monotonic() + 5
    while True:
        lines = shared_server.log_path.read_text(errors="replace").splitlines()
        if all(any(all(part in line for part in parts) for line in lines) for parts in wanted):
            return
        assert time.monotonic() < deadline, [line for line in lines if trace in line]
        time.sleep(0.05)


def test_a_request_without_a_key_gets_one_back(api: httpx.Client, fn: str) -> None:
    reply = whoami(api, fn, None)
    key = reply.headers["x-agentcell-session-id"]
    assert reply.status_code == 200 and key.startswith("ses_")
    assert whoami(api, fn, key).json()["instance"] == reply.json()["instance"]


def test_cookie_affinity_sets_and_follows_the_cookie(api: httpx.Client) -> None:
    name = "cookie-" + uuid.uuid4().hex[:8]
    assert deploy(api, name, {**ECHO, "affinity": {"kind": "cookie", "cookie": "sid"}}).status_code == 200
    try:
        first = api.get(f"/fn/{name}/whoami")
        assert "sid=" in first.headers["set-cookie"] and f"Path=/fn/{name}" in first.headers["set-cookie"]
        second = api.get(f"/fn/{name}/whoami", headers={"cookie": f"sid={first.cookies['sid']}"})
        assert second.json()["instance"] == first.json()["instance"]
    finally:
        api.delete(f"/v1/functions/{name}")


def test_session_resource_lifecycle(api: httpx.Client, fn: str) -> None:
    created = api.post(
        f"/v1/functions/{fn}/sessions", json={"key": "pre-1", "ttl_s": 3600, "metadata": {"u": "a"}}
    )
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["state"] == "idle" and session["instance_id"]
    assert whoami(api, fn, "pre-1").json()["instance"] == session["instance_id"]
    listed = api.get(f"/v1/functions/{fn}/sessions", params={"metadata": "u=a"}).json()["sessions"]
    assert [s["id"] for s in listed] == [session["id"]]
    renewed = api.patch(f"/v1/sessions/{session['id']}", json={"idle_timeout_s": 7200}).json()
    assert renewed["idle_timeout_s"] == 7200 and renewed["instance_id"] == session["instance_id"]
    assert api.delete(f"/v1/sessions/{session['id']}").status_code == 204
    ended = api.get(f"/v1/sessions/{session['id']}").json()
    assert (ended["state"], ended["end_reason"]) == ("ended", "deleted")
    for path in ("/v1/sessions", f"/v1/functions/{fn}/sessions"):
        refused = api.get(path, params={"state": "ended"})  # not an empty list that looks like an answer
        assert refused.status_code == 400 and "by its id" in refused.json()["message"], refused.text
    assert api.post(f"/v1/functions/{fn}/sessions", json={"key": "pre-1"}).status_code == 201


def test_sse_events_arrive_before_the_response_ends(api: httpx.Client, fn: str) -> None:
    started = time.monotonic()
    with api.stream("GET", f"/fn/{fn}/sse", headers={"x-agentcell-session-id": "sse"}) as reply:
        chunks = reply.iter_raw()
        first = next(chunks)
        first_at = time.monotonic() - started
        rest = b"".join(chunks)
    assert first.startswith(b"data: event 0")
    assert b"event 2" in first + rest
    assert first_at < 0.5 * (time.monotonic() - started) + 0.3  # the first event did not wait for the last


def test_large_bodies_stream_both_ways(api: httpx.Client, fn: str) -> None:
    block = os.urandom(1 << 20)
    body = (block for _ in range(256))  # 256 MiB, chunked, never whole in this process either
    reply = api.post(f"/fn/{fn}/echo", content=body, headers={"x-agentcell-session-id": "big"})
    expected = hashlib.sha256()
    for _ in range(256):
        expected.update(block)
    assert reply.json() == {"bytes": 256 << 20, "sha256": expected.hexdigest()}
    with api.stream(
        "GET", f"/fn/{fn}/big", params={"mb": 128}, headers={"x-agentcell-session-id": "big"}
    ) as down:
        assert sum(len(c) for c in down.iter_bytes()) == 128 << 20


def test_killing_an_instance_ends_its_session_only(api: httpx.Client, fn: str) -> None:
    victim = api.post(f"/v1/functions/{fn}/sessions", json={"key": "victim"}).json()
    other = api.post(f"/v1/functions/{fn}/sessions", json={"key": "other"}).json()
    pid = whoami(api, fn, "victim").json()["pid"]
    assert pid > 0
    assert api.get(f"/fn/{fn}/crash", headers={"x-agentcell-session-id": "victim"}).status_code in (200, 502)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        state = api.get(f"/v1/sessions/{victim['id']}").json()
        if state["state"] == "ended":
            break
        time.sleep(0.05)
    assert (state["state"], state["end_reason"]) == ("ended", "instance_failed")
    assert api.get(f"/v1/sessions/{other['id']}").json()["state"] in ("idle", "active")
    assert whoami(api, fn, "other").json()["instance"] == other["instance_id"]
    fresh = whoami(api, fn, "victim").json()
    assert fresh["instance"] != victim["instance_id"]


def test_bad_input_gets_envelopes(api: httpx.Client, fn: str) -> None:
    assert api.get("/fn/nope-missing/x").json()["code"] == "not_found"
    bad_key = whoami(api, fn, "bad key with spaces")
    assert bad_key.status_code == 400 and "session key" in bad_key.json()["message"]
    long_key = whoami(api, fn, "k" * 300)
    assert long_key.status_code == 400
    bad_configs: list[tuple[dict[str, object], str]] = [
        ({"cmd": "x", "sessions_per_instance": 0}, "sessions_per_instance"),
        ({"cmd": "x", "sessions_per_instance": 201}, "sessions_per_instance"),
        ({"cmd": "x", "idle_timeout_s": -1}, "idle_timeout_s"),
        ({"cmd": "x", "min_warm": 5, "max_instances": 2}, "min_warm"),
        ({"cmd": "x", "affinity": {"kind": "sticky"}}, "affinity"),
        ({}, "cmd"),
        ({"cmd": "x", "stdio_process": "shared"}, "stdio_process applies to a stdio MCP server"),
        ({"stdio": "x", "stdio_process": "pooled"}, "stdio_process"),
        ({"stdio": "x", "env": {"AGENTCELL_MCP_STREAM_MAX_S": "soon"}}, "give seconds, a number"),
        ({"stdio": "x", "env": {"AGENTCELL_MCP_STREAM_MAX_S": "-1"}}, "AGENTCELL_MCP_STREAM_MAX_S"),
    ]
    for config, needle in bad_configs:
        reply = deploy(api, "bad-config", config)
        assert reply.status_code == 400 and needle in reply.json()["message"], reply.text
    assert deploy(api, "Bad_Name", ECHO).status_code == 400
    assert api.put("/v1/functions/ok-name", content=b"x").status_code == 400
    garbage = api.put(
        "/v1/functions/ok-name", files={"config": (None, '{"cmd": "x"}'), "code": ("c.tgz", b"nope")}
    )
    assert garbage.status_code == 400 and "tar" in garbage.json()["message"]
    assert api.get("/v1/functions/ok-name").status_code == 404
    assert api.post(f"/v1/functions/{fn}/sessions", json={"ttl_s": 0}).status_code == 400
    sessions = f"/v1/functions/{fn}/sessions"
    garbage = api.post(sessions, content=b"garbage", headers={"content-type": "application/json"})
    assert garbage.status_code == 400 and "not JSON" in garbage.json()["message"], garbage.text
    assert '{"key": "alice-1"' in garbage.json()["message"]  # what to send instead
    listed = api.post(sessions, json=["k"])
    assert listed.status_code == 400 and "JSON object" in listed.json()["message"], listed.text
    defaults = api.post(sessions)  # no body: every default
    assert defaults.status_code == 201, defaults.text
    assert defaults.json()["key"] == defaults.json()["id"]
    assert api.delete(f"/v1/sessions/{defaults.json()['id']}").status_code == 204
    assert api.post(f"/v1/functions/{fn}/sessions", json={"key": "has space"}).status_code == 400
    assert api.patch("/v1/sessions/ses_missing", json={"ttl_s": 5}).status_code == 404


def test_a_server_that_never_listens_fails_cleanly(api: httpx.Client) -> None:
    name = "deaf-" + uuid.uuid4().hex[:8]
    assert deploy(api, name, {"cmd": "sleep 30", "ready_timeout_s": 1}).status_code == 200
    try:
        reply = api.get(f"/fn/{name}/x", headers={"x-agentcell-session-id": "a"})
        assert reply.status_code == 503 and "listen" in reply.json()["message"]
        assert reply.json()["message"].endswith("it printed nothing")
    finally:
        api.delete(f"/v1/functions/{name}")


def test_a_server_that_exits_at_start_says_why(api: httpx.Client) -> None:
    """The error shows the end of what the server printed: the instance (and its log) is gone."""
    name = "crash-" + uuid.uuid4().hex[:8]
    crash = "echo starting; echo 'ModuleNotFoundError: No module named flask' >&2; exit 1"
    assert deploy(api, name, {"cmd": crash}).status_code == 200
    try:
        reply = api.get(f"/fn/{name}/x", headers={"x-agentcell-session-id": "a"})
        message = reply.json()["message"]
        assert reply.status_code == 503 and "exited with code 1 before listening" in message
        assert message.endswith(
            "the end of its output:\nstarting\nModuleNotFoundError: No module named flask"
        )
    finally:
        api.delete(f"/v1/functions/{name}")


def test_restart_readopts_instances_with_their_memory(server_factory: type, tmp_path: object) -> None:
    server = server_factory()
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        assert deploy(api, "keep", ECHO).status_code == 200
        before = whoami(api, "keep", "k1").json()
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
    again = server_factory(state_dir=server.state_dir)
    with httpx.Client(headers=AUTH, base_url=again.url, timeout=60) as api:
        after = whoami(api, "keep", "k1").json()
        assert after["instance"] == before["instance"] and after["count"] == before["count"] + 1
        assert api.get("/v1/functions/keep").json()["version"] == 1
        api.delete("/v1/functions/keep")


def test_an_instance_that_stops_listening_ends_its_session_with_a_clear_error(
    api: httpx.Client, fn: str
) -> None:
    """The instance's process lives on but refuses connections: the request that finds out gets a
    502 saying the session ended because its instance failed (not a bare "not accepting
    connections"), and the key's next request gets a new session on another instance."""
    first = whoami(api, fn, "wedged").json()
    sessions = api.get(f"/v1/functions/{fn}/sessions").json()["sessions"]
    session_id = next(s["id"] for s in sessions if s["key"] == "wedged")
    api.get(f"/fn/{fn}/unlisten", headers={"x-agentcell-session-id": "wedged"})
    found = whoami(api, fn, "wedged")
    assert found.status_code == 502, found.text
    message = found.json()["message"]
    assert f"{first['instance']} failed" in message and f"session {session_id} ended" in message, message
    assert "Send the request again" in message
    deadline = time.monotonic() + 10
    while (state := api.get(f"/v1/sessions/{session_id}").json())["state"] != "ended":
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert state["end_reason"] == "instance_failed"
    fresh = whoami(api, fn, "wedged")
    assert fresh.status_code == 200 and fresh.json()["instance"] != first["instance"]
