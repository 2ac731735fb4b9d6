"""Functions behind the gateway on the real server and Linux driver, continued: WebSocket, host
routing, `affinity: none` scaling, hooks with deadlines, exclusive instances wiped, sharing,
the bounded wait queue, graceful shutdown, client disconnects and a 1 GiB upload."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from agentcell.server.sandbox.linux.driver import node_id_for
from tests.conftest import AUTH, ServerFactory, ServerProcess
from tests.integration.conftest import deploy
from tests.unit.test_metrics import parse

KEY = "x-agentcell-session-id"
ECHO: dict[str, Any] = {"cmd": "python3 app.py", "idle_timeout_s": 600}
CGROUP_ROOT = Path("/sys/fs/cgroup")
MiB = 1 << 20

MakeFn = Callable[[dict[str, Any]], str]


@pytest.fixture
def make_fn(api: httpx.Client) -> Iterator[MakeFn]:
    """Deploy a function of echo_fn with a config; every one is deleted after the test."""
    names: list[str] = []

    def make(config: dict[str, Any]) -> str:
        name = "more-" + uuid.uuid4().hex[:8]
        reply = deploy(api, name, config)
        assert reply.status_code == 200, reply.text
        names.append(name)
        return name

    yield make
    for name in names:
        api.delete(f"/v1/functions/{name}")


def get(api: httpx.Client, fn: str, route: str, key: str | None = None, **params: Any) -> httpx.Response:
    """GET /fn/{fn}{route} with the session key (if any) and query parameters."""
    return api.get(f"/fn/{fn}{route}", params=params, headers={KEY: key} if key else {})


def session_of(api: httpx.Client, fn: str, key: str) -> dict[str, Any]:
    """The live session of `key` ({} when there is none)."""
    sessions = api.get(f"/v1/functions/{fn}/sessions").json()["sessions"]
    return next((s for s in sessions if s["key"] == key), {})


def state_of(api: httpx.Client, fn: str, key: str) -> str | None:
    return session_of(api, fn, key).get("state")


def wait_for(condition: Callable[[], Any], timeout_s: float = 10, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s (last: {value!r})")
        time.sleep(0.05)


def traces(state_dir: Path, instance_id: str) -> list[str]:
    """What is left on the host of one instance: cgroups, state file, processes."""
    found = [str(p) for p in CGROUP_ROOT.glob(f"*/agentcell-*/{instance_id}")]
    found += [str(p) for p in CGROUP_ROOT.glob(f"agentcell-*/{instance_id}")]
    if (state_dir / "instances" / f"{instance_id}.json").exists():
        found.append(f"{state_dir}/instances/{instance_id}.json")
    return found + [f"pid {pid}" for pid in pids_of_instance(instance_id)]


def pids_of_instance(instance_id: str) -> list[int]:
    return pids_with_env(f"AGENTCELL_INSTANCE_ID={instance_id}")


def pids_with_env(variable: str) -> list[int]:
    """Host processes whose environment holds `variable` (NAME=value): an instance's server, hooks."""
    needle = variable.encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def node_leftovers(server: ServerProcess) -> list[str]:
    node = node_id_for(server.state_dir)
    found = [str(p) for p in CGROUP_ROOT.glob(f"*/agentcell-{node}")]
    found += [str(p) for p in CGROUP_ROOT.glob(f"agentcell-{node}")]
    return found + [str(p) for p in (server.state_dir / "instances").glob("*")]


def open_request(url: str, path: str, headers: dict[str, str]) -> socket.socket:
    """Send a request head on a raw socket (so that the test can vanish mid-request)."""
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    sent = {**AUTH, **headers}
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in sent.items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def status_of(proc_pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{proc_pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


# -- 1. WebSocket ---------------------------------------------------------------------------------


def test_websocket_echo_reaches_the_sessions_instance(
    api: httpx.Client, make_fn: MakeFn, server_url: str
) -> None:
    """The upgrade passes through (the client checks Sec-WebSocket-Accept), frames go both ways
    unbuffered, the upgrade request follows session affinity, and the session is active while the
    socket is open and idle after."""
    fn = make_fn(ECHO)
    alice = get(api, fn, "/whoami", "ws-alice").json()
    bob = get(api, fn, "/whoami", "ws-bob").json()
    url = server_url.replace("http://", "ws://") + f"/fn/{fn}/ws"
    with ws_connect(url, additional_headers={KEY: "ws-alice", **AUTH}, open_timeout=10) as ws:
        for message in ("hello", "x" * 100_000, "ünïcode"):
            ws.send(message)
            assert ws.recv(timeout=5) == message
        ws.send("whoami")
        assert json.loads(ws.recv(timeout=5))["instance"] == alice["instance"]
        assert state_of(api, fn, "ws-alice") == "active"
    with ws_connect(url, additional_headers={KEY: "ws-bob", **AUTH}, open_timeout=10) as ws:
        ws.send("whoami")
        assert json.loads(ws.recv(timeout=5))["instance"] == bob["instance"] != alice["instance"]
    wait_for(lambda: state_of(api, fn, "ws-alice") == "idle", 5, "idle after close")
    assert get(api, fn, "/whoami", "ws-alice").json()["instance"] == alice["instance"]


# -- 2. Host routing ------------------------------------------------------------------------------


def test_host_routing_by_function_subdomain(server_factory: ServerFactory) -> None:
    server = server_factory(env={"AGENTCELL_FN_DOMAIN": "fn.test"})
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        for name in ("hosted", "other"):
            assert deploy(api, name, ECHO).status_code == 200
        first = api.get("/whoami", headers={"host": "hosted.fn.test", KEY: "h1"})
        assert first.status_code == 200 and first.json()["path"] == "/whoami"
        instance = first.json()["instance"]
        again = api.get("/whoami?q=1", headers={"host": "HOSTED.Fn.Test:8700", KEY: "h1"}).json()
        assert again["instance"] == instance and again["path"] == "/whoami?q=1"
        assert api.get("/fn/hosted/whoami", headers={KEY: "h1"}).json()["instance"] == instance
        # on its own host a function owns every path: /fn/other/... is the app's, not another function's
        shadow = api.get("/fn/other/whoami", headers={"host": "hosted.fn.test", KEY: "h1"})
        assert shadow.status_code == 404 and shadow.json() == {
            "error": "no such path",
            "path": "/fn/other/whoami",
        }
        missing = api.get("/whoami", headers={"host": "nope.fn.test"})
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        for host in ("fn.test", "a.b.fn.test", "hosted.elsewhere.test"):
            assert api.get("/healthz", headers={"host": host}).json() == {"status": "ok"}
        assert deploy(api, "jar", {**ECHO, "affinity": {"kind": "cookie"}}).status_code == 200
        cookie = api.get("/whoami", headers={"host": "jar.fn.test"}).headers["set-cookie"]
        assert cookie.startswith("agentcell_session=ses_") and "Path=/;" in cookie


# -- 3. affinity none -----------------------------------------------------------------------------


def test_stateless_function_scales_from_zero_out_by_concurrency_and_back(
    api: httpx.Client, make_fn: MakeFn, server_url: str
) -> None:
    fn = make_fn({**ECHO, "affinity": {"kind": "none"}, "concurrency_per_instance": 1, "max_instances": 2})
    assert api.get(f"/v1/functions/{fn}").json()["instances"] == 0
    counts: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            counts.append(api.get(f"/v1/functions/{fn}").json()["instances"])
            time.sleep(0.05)

    def slow(_: int) -> httpx.Response:
        with httpx.Client(headers=AUTH, base_url=server_url, timeout=30) as client:
            return client.get(f"/fn/{fn}/slow", params={"s": 1})

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(slow, range(3)))
    finally:
        stop.set()
        watcher.join()
    assert [r.status_code for r in replies] == [200] * 3
    assert all(KEY not in r.headers for r in replies)  # no sessions for affinity none
    assert len({r.json()["instance"] for r in replies}) == 2
    assert max(counts) == 2


def test_a_stateless_request_with_room_is_routed_without_waiting(api: httpx.Client, make_fn: MakeFn) -> None:
    """Once an instance is ready, `affinity: none` requests take the gateway's task-free path
    (`Scheduler.route_free`), as a warm session's do: only the awaiting route records the
    `first_byte` start phase, so its count grows by the cold request alone."""
    fn = make_fn({**ECHO, "affinity": {"kind": "none"}, "concurrency_per_instance": 4})
    phase = 'agentcell_start_phase_duration_seconds_count{phase="first_byte"}'
    before = parse(api.get("/metrics").text).get(phase, 0)
    replies = [get(api, fn, "/whoami") for _ in range(6)]
    assert [r.status_code for r in replies] == [200] * 6
    assert len({r.json()["instance"] for r in replies}) == 1
    assert parse(api.get("/metrics").text)[phase] == before + 1


def test_stateless_instances_scale_back_to_zero_when_idle(api: httpx.Client, make_fn: MakeFn) -> None:
    fn = make_fn({**ECHO, "affinity": {"kind": "none"}, "idle_timeout_s": 1})
    assert get(api, fn, "/whoami").status_code == 200
    assert api.get(f"/v1/functions/{fn}").json()["instances"] == 1
    wait_for(lambda: api.get(f"/v1/functions/{fn}").json()["instances"] == 0, 5, "scale to zero")
    assert get(api, fn, "/whoami").status_code == 200  # and from zero again


# -- 4. hooks -------------------------------------------------------------------------------------


def test_initialize_hook_runs_before_the_first_request(api: httpx.Client, make_fn: MakeFn) -> None:
    fn = make_fn({**ECHO, "initialize": {"cmd": 'echo "init $AGENTCELL_INSTANCE_ID" > /tmp/init.txt'}})
    instance = get(api, fn, "/whoami", "i1").json()["instance"]
    reply = get(api, fn, "/file", "i1", path="/tmp/init.txt")
    assert reply.json() == {"text": f"init {instance}\n"}


@pytest.mark.parametrize(
    ("hook", "needle"),
    [
        ({"cmd": "echo broken >&2; exit 3"}, "initialize hook exited with code 3"),
        ({"cmd": "sleep 60", "timeout_s": 1}, "initialize hook passed its 1 s deadline"),
    ],
)
def test_a_failing_initialize_hook_fails_the_session_and_leaves_nothing(
    api: httpx.Client, make_fn: MakeFn, shared_server: ServerProcess, hook: dict[str, Any], needle: str
) -> None:
    fn = make_fn({**ECHO, "initialize": hook})
    started = time.monotonic()
    reply = get(api, fn, "/whoami", "doomed")
    assert time.monotonic() - started < 5
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    assert reply.json()["code"] == "unavailable"
    assert f"could not start an instance of {fn}" in reply.json()["message"]
    assert needle in reply.json()["message"]
    assert session_of(api, fn, "doomed") == {}
    assert api.get(f"/v1/functions/{fn}").json()["instances"] == 0

    def leftovers() -> list[str]:
        ids = []
        for path in (shared_server.state_dir / "instances").glob("*.json"):
            with contextlib.suppress(OSError):  # (removed meanwhile)
                if json.loads(path.read_text())["env"].get("AGENTCELL_FUNCTION") == fn:
                    ids.append(path.stem)
        return ids + [f"pid {pid}" for pid in pids_with_env(f"AGENTCELL_FUNCTION={fn}")]

    wait_for(lambda: leftovers() == [], 5, "the failed instance gone")


def test_pre_stop_hook_sees_the_session_and_runs_before_release(api: httpx.Client, make_fn: MakeFn) -> None:
    """On a shared instance, a deleted session's pre_stop leaves a line that the other session reads."""
    line = 'echo "$AGENTCELL_SESSION_ID $AGENTCELL_SESSION_KEY $AGENTCELL_END_REASON" >> /tmp/pre_stop.log'
    fn = make_fn({**ECHO, "sessions_per_instance": 2, "pre_stop": {"cmd": line, "timeout_s": 10}})
    a = api.post(f"/v1/functions/{fn}/sessions", json={"key": "pa"}).json()
    b = api.post(f"/v1/functions/{fn}/sessions", json={"key": "pb"}).json()
    assert a["instance_id"] == b["instance_id"]
    assert api.delete(f"/v1/sessions/{a['id']}").status_code == 204
    log = get(api, fn, "/file", "pb", path="/tmp/pre_stop.log")
    assert log.json() == {"text": f"{a['id']} pa deleted\n"}


def test_a_hanging_pre_stop_hook_is_killed_at_its_deadline(
    api: httpx.Client, make_fn: MakeFn, shared_server: ServerProcess
) -> None:
    fn = make_fn({**ECHO, "pre_stop": {"cmd": "sleep 60", "timeout_s": 1}})
    session = api.post(f"/v1/functions/{fn}/sessions", json={"key": "hang"}).json()
    started = time.monotonic()
    assert api.delete(f"/v1/sessions/{session['id']}").status_code == 204
    assert 0.9 < time.monotonic() - started < 5
    ended = api.get(f"/v1/sessions/{session['id']}").json()
    assert (ended["state"], ended["end_reason"]) == ("ended", "deleted")
    assert traces(shared_server.state_dir, session["instance_id"]) == []


# -- 5. exclusive instances are wiped -------------------------------------------------------------


def test_an_exclusive_instance_is_destroyed_with_its_data(
    api: httpx.Client, make_fn: MakeFn, shared_server: ServerProcess
) -> None:
    fn = make_fn(ECHO)
    first = get(api, fn, "/whoami", "wipe").json()["instance"]
    for path in ("/tmp/secret.txt", "/home/user/secret.txt"):
        assert get(api, fn, "/write", "wipe", path=path, text="alice's").status_code == 200
        assert get(api, fn, "/file", "wipe", path=path).json() == {"text": "alice's"}
    assert pids_of_instance(first)
    session = session_of(api, fn, "wipe")
    assert api.delete(f"/v1/sessions/{session['id']}").status_code == 204
    assert traces(shared_server.state_dir, first) == []
    for key in ("wipe", "next"):
        assert get(api, fn, "/whoami", key).json()["instance"] != first
        for path in ("/tmp/secret.txt", "/home/user/secret.txt"):
            assert get(api, fn, "/file", key, path=path).status_code == 404


# -- 6. sessions_per_instance ---------------------------------------------------------------------


def test_shared_instances_hold_at_most_n_sessions_and_share_their_process(
    api: httpx.Client, make_fn: MakeFn, server_url: str
) -> None:
    fn = make_fn({**ECHO, "sessions_per_instance": 2})
    first = [get(api, fn, "/whoami", f"s{i}").json() for i in range(3)]
    by_instance = collections.Counter(w["instance"] for w in first)
    assert len(by_instance) == 2 and max(by_instance.values()) == 2
    # two sessions on one instance talk to the same process (by design): one counter
    shared = next(i for i, n in by_instance.items() if n == 2)
    keys = [f"s{i}" for i, w in enumerate(first) if w["instance"] == shared]
    one, two = (get(api, fn, "/whoami", k).json() for k in keys)
    assert one["pid"] == two["pid"] and two["count"] == one["count"] + 1

    def whoami(key: str) -> str:
        with httpx.Client(headers=AUTH, base_url=server_url, timeout=30) as client:
            instance: str = client.get(f"/fn/{fn}/whoami", headers={KEY: key}).json()["instance"]
            return instance

    with ThreadPoolExecutor(5) as pool:
        instances = dict(zip(range(5), pool.map(whoami, [f"c{i}" for i in range(5)]), strict=True))
    sessions = api.get(f"/v1/functions/{fn}/sessions").json()["sessions"]
    assert len(sessions) == 8
    load = collections.Counter(s["instance_id"] for s in sessions)
    assert max(load.values()) <= 2 and len(load) >= 4
    for i, instance in instances.items():
        assert session_of(api, fn, f"c{i}")["instance_id"] == instance


# -- 7. max_instances: the bounded wait queue -----------------------------------------------------


def test_full_function_queues_then_answers_429_or_503_with_retry_after(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env={"AGENTCELL_MAX_WAITING_REQUESTS": "1", "AGENTCELL_WAIT_TIMEOUT_S": "1.5"})

    def whoami(key: str) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        with httpx.Client(headers=AUTH, base_url=server.url, timeout=30) as client:
            reply = client.get("/fn/full/whoami", headers={KEY: key})
        return reply, time.monotonic() - started

    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        assert deploy(api, "full", {**ECHO, "max_instances": 1}).status_code == 200
        assert whoami("holder")[0].status_code == 200
        timed_out, waited = whoami("late")
        assert timed_out.status_code == 503 and 1.4 < waited < 4
        assert timed_out.headers["retry-after"] == "2" and "within 1.5 s" in timed_out.json()["message"]
        with ThreadPoolExecutor(2) as pool:
            replies = sorted(pool.map(whoami, ["c1", "c2"]), key=lambda r: r[0].status_code)
        (refused, refused_s), (waited_out, _) = replies
        assert (refused.status_code, waited_out.status_code) == (429, 503)
        assert refused.headers["retry-after"] == "1" and refused_s < 1
        assert "max_instances (1)" in refused.json()["message"]
        assert refused.json()["code"] == "quota_exceeded"
        holder = session_of(api, "full", "holder")
        assert holder and api.delete(f"/v1/sessions/{holder['id']}").status_code == 204
        assert whoami("late")[0].status_code == 200  # a refused key is not burned
        api.delete("/v1/functions/full")


# -- 8. graceful shutdown -------------------------------------------------------------------------


def test_sigterm_drains_runs_pre_stop_and_leaves_nothing(server_factory: ServerFactory) -> None:
    server = server_factory()
    hook = {"cmd": 'test -n "$AGENTCELL_SESSION_ID" && test "$AGENTCELL_END_REASON" = shutdown'}
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        assert deploy(api, "drain", {**ECHO, "sessions_per_instance": 2, "pre_stop": hook}).status_code == 200
        shared = get(api, "drain", "/whoami", "g1").json()["instance"]
        assert get(api, "drain", "/whoami", "g2").json()["instance"] == shared
        assert deploy(api, "solo", ECHO).status_code == 200
        solo = get(api, "solo", "/whoami", "g3").json()["instance"]
        sessions = {s["id"] for s in api.get("/v1/functions/drain/sessions").json()["sessions"]}
        assert len(sessions) == 2
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(get, api, "drain", "/slow", "g1", s=2)
            wait_for(lambda: state_of(api, "drain", "g1") == "active", 5, "in flight")
            server.proc.send_signal(signal.SIGTERM)
            reply = slow.result(timeout=30)
    assert reply.status_code == 200 and reply.json()["slept"] == 2
    assert server.proc.wait(timeout=30) == 0, server.log()
    log = server.log_path.read_text()
    assert {s for s in sessions if f"session {s}: pre_stop hook passed" in log} == sessions, log[-3000:]
    assert node_leftovers(server) == []
    assert pids_of_instance(shared) == pids_of_instance(solo) == []


# -- 9. client disconnects ------------------------------------------------------------------------


def test_a_client_disconnect_mid_request_releases_the_session(
    api: httpx.Client, make_fn: MakeFn, server_url: str
) -> None:
    fn = make_fn(ECHO)
    instance = get(api, fn, "/whoami", "gone").json()["instance"]
    sock = open_request(server_url, f"/fn/{fn}/slow?s=5", {KEY: "gone"})
    wait_for(lambda: state_of(api, fn, "gone") == "active", 5, "in flight")
    sock.close()
    wait_for(lambda: state_of(api, fn, "gone") == "idle", 3, "idle after disconnect")
    assert get(api, fn, "/whoami", "gone").json()["instance"] == instance


def test_a_request_timeout_releases_the_session(api: httpx.Client, make_fn: MakeFn) -> None:
    fn = make_fn({**ECHO, "request_timeout_s": 1})
    reply = get(api, fn, "/slow", "late", s=3)
    assert reply.status_code == 504 and reply.json()["code"] == "timeout"
    assert state_of(api, fn, "late") == "idle"
    assert get(api, fn, "/whoami", "late").status_code == 200


def test_a_client_disconnect_frees_a_stateless_slot(
    api: httpx.Client, make_fn: MakeFn, server_url: str
) -> None:
    """With one instance taking one request at a time, a leaked in-flight count would make the
    next request wait for wait_timeout_s and fail."""
    fn = make_fn({**ECHO, "affinity": {"kind": "none"}, "concurrency_per_instance": 1, "max_instances": 1})
    assert get(api, fn, "/whoami").status_code == 200
    sock = open_request(server_url, f"/fn/{fn}/slow?s=30", {})
    time.sleep(0.5)
    sock.close()
    time.sleep(0.2)
    # a leaked count would hold this request for the function's wait_timeout_s, then refuse it
    assert get(api, fn, "/whoami").status_code == 200


def test_a_client_that_gives_up_during_a_cold_start_does_not_end_the_session(
    api: httpx.Client, make_fn: MakeFn, server_url: str
) -> None:
    fn = make_fn({**ECHO, "cmd": "sleep 1.5; exec python3 app.py"})
    sock = open_request(server_url, f"/fn/{fn}/whoami", {KEY: "cold"})
    time.sleep(0.3)
    sock.close()
    session = wait_for(lambda: session_of(api, fn, "cold"), 2, "a pending session")
    wait_for(lambda: state_of(api, fn, "cold") == "idle", 10, "bound")
    assert get(api, fn, "/whoami", "cold").json()["instance"] == session_of(api, fn, "cold")["instance_id"]
    assert session_of(api, fn, "cold")["id"] == session["id"]


def test_a_client_that_gives_up_while_queued_leaves_no_session(
    api: httpx.Client, make_fn: MakeFn, server_url: str
) -> None:
    """At max_instances, a request whose client leaves while it waits for room leaves the queue:
    its session is gone at once, and none is bound for it when room appears."""
    fn = make_fn({**ECHO, "max_instances": 1})
    assert get(api, fn, "/whoami", "hold").status_code == 200
    sock = open_request(server_url, f"/fn/{fn}/whoami", {KEY: "ghost"})
    wait_for(lambda: state_of(api, fn, "ghost") == "pending", 5, "queued")
    sock.close()
    wait_for(lambda: not session_of(api, fn, "ghost"), 3, "the queued session gone")
    assert api.delete(f"/v1/sessions/{session_of(api, fn, 'hold')['id']}").status_code == 204
    time.sleep(0.5)
    assert api.get(f"/v1/functions/{fn}/sessions").json()["sessions"] == []


# -- 10. a 1 GiB upload ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_1_gib_upload_streams_with_bounded_server_memory(server_factory: ServerFactory) -> None:
    server = server_factory()
    block = os.urandom(MiB)
    expected = hashlib.sha256()
    for _ in range(1024):
        expected.update(block)
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=300) as api:
        assert deploy(api, "upload", ECHO).status_code == 200
        assert get(api, "upload", "/whoami", "up").status_code == 200
        before = status_of(server.proc.pid, "VmRSS")
        peak = [before]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.02):
                peak.append(status_of(server.proc.pid, "VmRSS"))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            reply = api.post(
                "/fn/upload/echo",
                content=(block for _ in range(1024)),
                headers={KEY: "up", "content-length": str(1024 * MiB)},
            )
        finally:
            stop.set()
            sampler.join()
        assert reply.json() == {"bytes": 1024 * MiB, "sha256": expected.hexdigest()}
        growth = max(max(peak), status_of(server.proc.pid, "VmHWM")) - before
        assert growth < 100 * MiB, f"the server grew by {growth / MiB:.0f} MiB"
        api.delete("/v1/functions/upload")
