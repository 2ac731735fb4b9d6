"""The sandbox pool on a real server (Linux driver, real namespaces and cgroups): creates claim
pre-started instances, which then behave exactly like freshly started ones; everything else
spawns as before; the pool refills, stays invisible, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentcell.server.sandbox.linux.driver import node_id_for
from tests.conftest import AUTH, TEST_API_KEY, ServerProcess

CGROUPS = Path("/sys/fs/cgroup")
Factory = Callable[..., ServerProcess]


def pool_env(size: int) -> dict[str, str]:
    return {"AGENTCELL_SANDBOX_POOL": str(size)}


@pytest.fixture
def client_for() -> Iterator[Callable[[ServerProcess], httpx.Client]]:
    clients: list[httpx.Client] = []

    def make(server: ServerProcess) -> httpx.Client:
        clients.append(httpx.Client(base_url=server.url, timeout=60, headers=AUTH))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def instance_ids(server: ServerProcess) -> set[str]:
    """Every instance with cgroups on the server's node (the memory hierarchy is always there)."""
    root = CGROUPS / "memory" / f"agentcell-{node_id_for(server.state_dir)}"
    return {p.name for p in root.iterdir() if p.is_dir()} if root.exists() else set()


def node_leftovers(server: ServerProcess) -> list[str]:
    node = node_id_for(server.state_dir)
    found = [str(p) for p in CGROUPS.glob(f"*/agentcell-{node}")]
    return found + [str(p) for p in (server.state_dir / "instances").glob("*")]


def metric(api: httpx.Client, name: str) -> float:
    for line in api.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


READY = "agentcell_sandbox_pool_ready"
HITS = 'agentcell_sandbox_pool_claims_total{result="hit"}'
MISSES = 'agentcell_sandbox_pool_claims_total{result="miss"}'


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout_s} s"
        time.sleep(0.05)


def full_pool(factory: Factory, api_for: Callable[[ServerProcess], httpx.Client], size: int) -> Any:
    server = factory(env=pool_env(size))
    api = api_for(server)
    wait_for(lambda: metric(api, READY) == size, f"a pool of {size}")
    return server, api


def create(api: httpx.Client, **body: Any) -> dict[str, Any]:
    reply = api.post("/v1/sandboxes", json={"timeout_s": 120, **body})
    assert reply.status_code == 201, reply.text
    created: dict[str, Any] = reply.json()
    return created


def created_at_once(server: ServerProcess, count: int) -> list[str]:
    """The ids of `count` creates that reach the server together: each on a connection opened
    beforehand, all sent before any answer is read. (Threads' creates through one client did not
    overlap enough on a busy machine: a burst of 10 was once 3 in flight at most.)"""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"timeout_s": 120}).encode()
    request = (
        f"POST /v1/sandboxes HTTP/1.1\r\nhost: {host}\r\nx-api-key: {TEST_API_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body
    connections = [socket.create_connection((host, int(port)), timeout=60) for _ in range(count)]
    try:
        for connection in connections:
            connection.sendall(request)
        return [json.loads(_answer_of(connection, 201))["id"] for connection in connections]
    finally:
        for connection in connections:
            connection.close()


def _answer_of(connection: socket.socket, status: int) -> bytes:
    """The body of the one answer on a `connection: close` connection."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), received[:2000]
    return body


def run(api: httpx.Client, sandbox_id: str, cmd: str) -> tuple[str, int]:
    reply = api.post(f"/v1/sandboxes/{sandbox_id}/commands", json={"cmd": cmd})
    assert reply.status_code == 200, reply.text
    events = [json.loads(line) for line in reply.text.splitlines()]
    out = "".join(e["data"] for e in events if e["type"] == "stdout")
    return out, events[-1]["exit_code"]


def cgroup_value(server: ServerProcess, controller: str, sandbox_id: str, name: str) -> str:
    node = node_id_for(server.state_dir)
    return (CGROUPS / controller / f"agentcell-{node}" / sandbox_id / name).read_text().strip()


def test_a_create_claims_a_pooled_instance_that_looks_fresh(
    server_factory: Factory, client_for: Callable[[ServerProcess], httpx.Client]
) -> None:
    """The sandbox is one of the instances that existed before the request (timing-independent
    evidence of a claim), with the requested limits, an empty home, and the pool refills."""
    server, api = full_pool(server_factory, client_for, 2)
    pooled = instance_ids(server)
    assert len(pooled) == 2
    assert api.get("/v1/sandboxes").json()["sandboxes"] == [], "pooled instances are not listed"
    for sandbox_id in pooled:
        assert api.get(f"/v1/sandboxes/{sandbox_id}").status_code == 404
        assert api.post(f"/v1/sandboxes/{sandbox_id}/commands", json={"cmd": "true"}).status_code == 404

    before = time.time()
    sandbox = create(api, cpu=0.5, memory_mb=256, env={"GREETING": "hi"})
    assert sandbox["id"] in pooled
    assert metric(api, HITS) == 1
    assert cgroup_value(server, "memory", sandbox["id"], "memory.limit_in_bytes") == str(256 << 20)
    assert cgroup_value(server, "cpu", sandbox["id"], "cpu.cfs_quota_us") == "50000"
    expires = datetime.fromisoformat(sandbox["expires_at"]).timestamp()
    assert expires >= before + 120, "the deadline counts from the claim"

    out, code = run(api, sandbox["id"], 'ls -A /home/user; echo "$GREETING $(id -un) $(hostname)"')
    assert code == 0
    assert out == f"hi user {sandbox['id'].replace('_', '-')}\n", "clean home, env applied"
    assert [s["id"] for s in api.get("/v1/sandboxes").json()["sandboxes"]] == [sandbox["id"]]
    wait_for(lambda: metric(api, READY) == 2, "the pool refilled")
    assert len(instance_ids(server)) == 3


def test_concurrent_claims_get_distinct_instances(
    server_factory: Factory, client_for: Callable[[ServerProcess], httpx.Client]
) -> None:
    server, api = full_pool(server_factory, client_for, 3)
    pooled = instance_ids(server)
    with ThreadPoolExecutor(5) as threads:
        ids = list(threads.map(lambda _: create(api)["id"], range(5)))
    assert len(set(ids)) == 5
    assert len(set(ids) & pooled) == 3
    assert (metric(api, HITS), metric(api, MISSES)) == (3, 2)
    for sandbox_id in ids:
        assert run(api, sandbox_id, "echo ok") == ("ok\n", 0)


def test_the_pool_grows_for_a_burst_and_serves_the_next_one(
    server_factory: Factory, client_for: Callable[[ServerProcess], httpx.Client]
) -> None:
    server = server_factory(env={**pool_env(1), "AGENTCELL_SANDBOX_POOL_MAX": "4"})
    api = client_for(server)
    wait_for(lambda: metric(api, READY) == 1, "a pool of 1")
    # A burst of 10 (one claim, nine spawns): the pool grows by the most creates in flight at once.
    first = created_at_once(server, 10)
    assert (metric(api, HITS), metric(api, MISSES)) == (1, 9)
    assert metric(api, "agentcell_sandbox_pool_target") == 4, "sized for the burst, up to the max"
    wait_for(lambda: metric(api, READY) == 4, "the pool grown to 4")
    pooled = instance_ids(server) - set(first)
    with ThreadPoolExecutor(4) as threads:
        second = list(threads.map(lambda _: create(api)["id"], range(4)))
    assert set(second) == pooled, "the next burst claimed what the pool grew"
    assert (metric(api, HITS), metric(api, MISSES)) == (5, 9)
    assert run(api, second[0], "echo warm") == ("warm\n", 0)


def test_creates_one_after_another_do_not_grow_the_pool_past_the_node(
    server_factory: Factory, client_for: Callable[[ServerProcess], httpx.Client]
) -> None:
    """The exploratory tester's leak: 40 create-then-delete calls in a row on a node of 2 once
    grew the pool to 40 idle sandboxes. Each create is alone in flight: the pool stays at 1."""
    server = server_factory(env={**pool_env(1), "AGENTCELL_MAX_SANDBOXES": "2"})
    api = client_for(server)
    wait_for(lambda: metric(api, READY) == 1, "a pool of 1")
    for _ in range(40):
        sandbox = create(api)
        assert api.delete(f"/v1/sandboxes/{sandbox['id']}").status_code == 204
        assert len(instance_ids(server)) <= 2
    assert metric(api, "agentcell_sandbox_pool_target") == 1
    wait_for(lambda: metric(api, READY) == 1, "the pool refilled")
    assert len(instance_ids(server)) == 1


@pytest.mark.parametrize("body", [{"disk_mb": 64}, {"network": {"egress": "open"}}], ids=["disk", "network"])
def test_requests_the_pool_cannot_serve_are_spawned(
    server_factory: Factory, client_for: Callable[[ServerProcess], httpx.Client], body: dict[str, Any]
) -> None:
    server, api = full_pool(server_factory, client_for, 1)
    pooled = instance_ids(server)
    sandbox = create(api, **body)
    assert sandbox["id"] not in pooled
    assert instance_ids(server) >= pooled, "the pooled instance is still there"
    assert run(api, sandbox["id"], "echo spawned") == ("spawned\n", 0)
    assert (metric(api, HITS), metric(api, MISSES)) == (0, 1)


def test_shutdown_leaves_no_cgroups_state_or_processes(
    server_factory: Factory, client_for: Callable[[ServerProcess], httpx.Client]
) -> None:
    server, api = full_pool(server_factory, client_for, 3)
    create(api)
    inits = helper_pids(server)
    assert len(inits) >= 4
    assert server.stop() == 0
    assert node_leftovers(server) == []
    wait_for(lambda: not helper_pids(server), "every helper process gone", 5)


def test_a_crashed_servers_pool_is_reaped_at_the_next_start(
    server_factory: Factory, client_for: Callable[[ServerProcess], httpx.Client]
) -> None:
    first, _ = full_pool(server_factory, client_for, 2)
    old = instance_ids(first)
    first.stop(signal.SIGKILL)
    second = server_factory(state_dir=first.state_dir, env=pool_env(2))
    api = client_for(second)
    wait_for(lambda: metric(api, READY) == 2, "a new pool")
    assert not old & instance_ids(second), "the old pooled instances were reaped"
    assert api.get("/v1/sandboxes").json()["sandboxes"] == []
    assert second.stop() == 0
    assert node_leftovers(second) == []


def test_pool_zero_spawns_every_sandbox(
    server_factory: Factory, client_for: Callable[[ServerProcess], httpx.Client]
) -> None:
    server = server_factory(env=pool_env(0))
    api = client_for(server)
    assert metric(api, READY) == 0
    assert instance_ids(server) == set()
    sandbox = create(api)
    assert run(api, sandbox["id"], "echo cold") == ("cold\n", 0)
    assert (metric(api, HITS), metric(api, MISSES)) == (0, 1)
    assert instance_ids(server) == {sandbox["id"]}


def test_a_negative_pool_size_stops_the_server_with_a_clear_error(server_factory: Factory) -> None:
    with pytest.raises(RuntimeError, match="AGENTCELL_SANDBOX_POOL must be between 0"):
        server_factory(env=pool_env(-1))


def helper_pids(server: ServerProcess) -> list[int]:
    """Host processes running this server's sandbox helper (spawner, inits, workers): by their
    executable, as an init renames itself."""
    found = []
    for exe in Path("/proc").glob("[0-9]*/exe"):
        try:
            target = os.readlink(exe)
        except OSError:
            continue
        if target.startswith(str(server.state_dir)) and "acell-helper" in target:
            found.append(int(exe.parent.name))
    return found
