"""Code contexts under a hostile or careless agent: output the server must not hold on to, and
limits that concurrent requests must not get past. Real server, real sandboxes, real kernels."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import AUTH, ServerProcess

MIB = 1 << 20
FLOOD_MIB = 96
"""what a kernel prints in the flood tests: far more than the node may hold for it"""


@pytest.fixture(scope="module")
def raw(shared_server: ServerProcess) -> Iterator[httpx.Client]:
    limits = httpx.Limits(max_connections=64)
    with httpx.Client(headers=AUTH, base_url=shared_server.url, timeout=120, limits=limits) as client:
        yield client


@pytest.fixture
def sandbox(raw: httpx.Client) -> Iterator[str]:
    reply = raw.post("/v1/sandboxes", json={"timeout_s": 300, "memory_mb": 2048})
    assert reply.status_code == 201, reply.text
    sid: str = reply.json()["id"]
    try:
        yield sid
    finally:
        raw.delete(f"/v1/sandboxes/{sid}")


def rss_bytes(server: ServerProcess) -> int:
    with open(f"/proc/{server.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def run(raw: httpx.Client, sid: str, code: str, **extra: object) -> list[dict[str, object]]:
    reply = raw.post(f"/v1/sandboxes/{sid}/code", json={"code": code, **extra})
    assert reply.status_code == 200, reply.text
    return [json.loads(line) for line in reply.text.splitlines()]


def wait_for_file(raw: httpx.Client, sid: str, path: str) -> None:
    """Until `path` exists in the sandbox (asked with a command, not through the kernel)."""
    reply = raw.post(
        f"/v1/sandboxes/{sid}/commands", json={"cmd": f"while [ ! -e {path} ]; do sleep 0.05; done"}
    )
    assert reply.status_code == 200 and '"exit_code":0' in reply.text, reply.text


FLOOD = f"""
import sys, threading
def flood():
    chunk = "x" * {MIB}
    for _ in range({FLOOD_MIB}):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    open("/tmp/flooded", "w").close()
"""


def test_output_printed_after_its_cell_ended_is_not_held_by_the_server(
    raw: httpx.Client, sandbox: str, shared_server: ServerProcess
) -> None:
    """A thread that keeps printing after its cell returned sends output no execution waits for:
    the server drops it as it comes. It held all of it (up to a thousand kernel messages of up
    to 64 MiB each), its memory growing as fast as the thread printed."""
    run(raw, sandbox, "1 + 1")  # the kernel and the connection exist before the first reading
    before = rss_bytes(shared_server)
    events = run(raw, sandbox, FLOOD + "threading.Thread(target=flood, daemon=True).start()")
    assert events[-1]["status"] == "ok", events
    wait_for_file(raw, sandbox, "/tmp/flooded")
    grown = rss_bytes(shared_server) - before
    assert grown < FLOOD_MIB * MIB // 4, f"the server grew {grown / MIB:.0f} MiB for {FLOOD_MIB} MiB printed"
    assert run(raw, sandbox, "40 + 2")[0]["data"] == {"text/plain": "42"}  # the context still works


def test_a_client_that_does_not_read_a_flood_costs_the_server_little(
    raw: httpx.Client, sandbox: str, shared_server: ServerProcess
) -> None:
    """While a client leaves a run's stream unread, the kernel's output waits in the kernel (its
    sandbox's memory), not in the server's: the server queues a few messages of it."""
    run(raw, sandbox, "1 + 1")
    before = rss_bytes(shared_server)
    request = {"code": FLOOD + "flood()", "timeout_s": 120}
    with raw.stream("POST", f"/v1/sandboxes/{sandbox}/code", json=request) as reply:
        assert reply.status_code == 200
        wait_for_file(raw, sandbox, "/tmp/flooded")
        grown = rss_bytes(shared_server) - before
        body = b"".join(reply.iter_bytes())
    # Its IOPUB_HWM messages of 1 MiB, and their copies on the way out that the allocator keeps:
    # 9-28 MiB measured here (this bound was a quarter, and a test run under load passed it);
    # holding the flood, as the server did, is all of it.
    assert grown < FLOOD_MIB * MIB // 2, f"the server grew {grown / MIB:.0f} MiB for {FLOOD_MIB} MiB printed"
    end = json.loads(body.splitlines()[-1])
    assert end["status"] == "ok" and end["truncated_bytes"] > 0, end


def test_concurrent_creates_stop_at_the_context_limit(raw: httpx.Client, sandbox: str) -> None:
    """`AGENTCELL_CODE_MAX_CONTEXTS` (16) holds when creates arrive at once: the limit was checked
    before an await (the cwd's stat) and counted after it, so 40 creates at once made 22."""
    url = f"/v1/sandboxes/{sandbox}/code/contexts"
    with ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(lambda _: raw.post(url, json={"language": "bash"}).status_code, range(40)))
    assert sorted(set(statuses)) == [201, 429], statuses
    assert statuses.count(201) == 16
    assert len(raw.get(url).json()["contexts"]) == 16


def test_a_bash_context_whose_code_closed_its_marker_fd_recovers(raw: httpx.Client, sandbox: str) -> None:
    """`exec 3>&-` closes the fd the bash runner ends each execution on: the run times out and the
    kernel is restarted, so the next run works. It was counted as interrupted with its state
    kept, and every later run of the context timed out the same way, for good."""
    url = f"/v1/sandboxes/{sandbox}/code/contexts"
    context = raw.post(url, json={"language": "bash"}).json()["id"]
    broken = run(raw, sandbox, "exec 3>&-", context_id=context, timeout_s=0.5)
    assert broken[-1]["status"] == "timeout" and broken[-1]["restarted"], broken
    after = run(raw, sandbox, "echo still here", context_id=context, timeout_s=30)
    assert [e["type"] for e in after] == ["stdout", "end"] and after[-1]["status"] == "ok", after
    assert after[0]["text"] == "still here\n"


def test_e2b_lists_the_contexts_of_a_sandbox_at_its_context_limit(raw: httpx.Client) -> None:
    """E2B's `GET /contexts` makes the default Python and JavaScript contexts if they are missing;
    in a sandbox that holds its 16 contexts already that answered 429, so nothing could be listed."""
    created = raw.post("/e2b/sandboxes", json={"templateID": "base", "timeout": 120}).json()
    kernel = {
        "E2b-Sandbox-Id": created["sandboxID"],
        "X-Access-Token": created["envdAccessToken"],
        "E2b-Sandbox-Port": "49999",
    }
    try:
        made = [raw.post("/e2b/contexts", json={"language": "bash"}, headers=kernel) for _ in range(16)]
        assert [r.status_code for r in made] == [200] * 16, made[-1].text
        listed = raw.get("/e2b/contexts", headers=kernel)
        assert listed.status_code == 200, listed.text
        assert sorted(c["id"] for c in listed.json()) == sorted(r.json()["id"] for r in made)
    finally:
        raw.delete(f"/e2b/sandboxes/{created['sandboxID']}")


def open_fds(server: ServerProcess) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def test_interrupts_at_once_run_one_at_a_time(
    raw: httpx.Client, sandbox: str, shared_server: ServerProcess
) -> None:
    """Each interrupt runs a `kill` in the sandbox, holding server fds outside the command budget
    (an interrupt must work at the limit): a flood of them at once ran as many at once, about 5
    fds each. Self-calibrating: the server holds no more than the flood's own connections and a
    few fds besides."""
    context = raw.post(f"/v1/sandboxes/{sandbox}/code/contexts", json={"language": "python"}).json()["id"]
    run(raw, sandbox, "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)", context_id=context)
    busy = threading.Thread(
        target=run,
        args=(raw, sandbox, "import time\nwhile True: time.sleep(1)"),
        kwargs={"context_id": context, "timeout_s": 20},
    )
    busy.start()
    url = f"/v1/sandboxes/{sandbox}/code/contexts/{context}/interrupt"
    raw.post(url)  # the connections of the pool exist before the first reading
    before, peak, done = open_fds(shared_server), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak.append(open_fds(shared_server))

    watcher = threading.Thread(target=watch)
    watcher.start()
    clients = 32
    try:
        with ThreadPoolExecutor(clients) as pool:
            statuses = list(pool.map(lambda _: raw.post(url).status_code, range(clients * 8)))
    finally:
        done.set()
        watcher.join()
    assert set(statuses) == {204}, statuses
    grown = max(peak) - before
    assert grown < clients + 20, f"{grown} fds more during {clients} interrupts at once"
    raw.delete(f"/v1/sandboxes/{sandbox}/code/contexts/{context}")
    busy.join()


def test_a_restart_that_a_delete_overtakes_is_a_404_not_a_500(raw: httpx.Client, sandbox: str) -> None:
    """A restart drops the kernel, then starts one; a delete that got in between closed the
    context, and the restart's start then failed with a 500. It is a 404 saying the context was
    deleted. (A run starts the kernel meanwhile, so that the restart and the delete queue behind
    it in that order.)"""
    contexts = f"/v1/sandboxes/{sandbox}/code/contexts"
    context = raw.post(contexts, json={"language": "python"}).json()["id"]
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(run, raw, sandbox, "1", context_id=context)
        while raw.get(f"{contexts}/{context}").json()["state"] != "starting":
            time.sleep(0.005)
        restart = pool.submit(raw.post, f"{contexts}/{context}/restart")
        time.sleep(0.05)  # the restart waits for the start in progress before the delete does
        deleted = raw.delete(f"{contexts}/{context}")
        restarted = restart.result()
        first.result()
    assert deleted.status_code == 204, deleted.text
    assert restarted.status_code in (200, 404), restarted.text
    if restarted.status_code == 404:
        assert f"code context {context} was deleted" in restarted.json()["message"], restarted.text
