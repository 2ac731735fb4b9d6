"""cold_start: create a sandbox → first exec finished, through the REST API.

Two servers in one run: with the sandbox pool off (AGENTCELL_SANDBOX_POOL=0: every create spawns,
the honest cold figure) and with a pool sized for the burst (every create of a round claims a
pre-started instance; the bench waits for the pool to refill between rounds). Each: sequential
p50/p95/p99 and 50 at once (p50/p99), plus the CPU the server process and the whole node spent per
sandbox in the concurrent rounds. Baselines: a raw namespace spawn of `true`
(unshare) for the sequential figures, and for the concurrent ones 50 such spawns started at once
(the kernel's share of a burst on this machine, from the start of the burst to each exit); the
pooled figures are also compared with the pool-off ones of the same run. A third server runs with
the default pool settings (a floor of 4 that grows for bursts): its first burst, and later ones
once the pool has grown for it. The pool-off server also runs bursts of 50 creates without the
exec (`concurrent50_create_only_*`): how a cold burst splits between the create and the first exec.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from bench.baselines import UNSHARE, burst_ms, samples_ms
from bench.client import LeanClient
from bench.procs import cpu_ms, node_busy_ms, own_cpu_ms
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer, pool_gauges

NAME = "cold_start"
RUNS = 60
CONCURRENT = 50
ROUNDS = 3
POOL_SIZE = CONCURRENT
POOL_SEQUENTIAL = 40
"""sequential claims from a full pool (fewer than it holds: a steady stream of creates never
lets it refill, by design)"""


@dataclass
class Figures:
    sequential: list[float] = field(default_factory=list)
    concurrent: list[float] = field(default_factory=list)
    server_cpu_ms: float = 0.0
    """server process CPU per sandbox in the concurrent rounds (create + first exec)"""
    node_cpu_ms: float = 0.0
    """the whole machine's CPU per sandbox in the same rounds, but for this bench's own: the
    server, the spawner and its workers, each sandbox's init and command, kernel threads"""
    create_only: list[float] = field(default_factory=list)
    """50 creates at once without the exec (pool off): the create's share of a burst"""


async def create_and_exec(client: LeanClient, *, run: bool = True) -> tuple[float, str]:
    """Create a sandbox and (unless `run` is False) run `true` in it: (ms, sandbox id)."""
    started = time.perf_counter()
    status, body = await client.request("POST", "/v1/sandboxes", {"timeout_s": 300})
    assert status == 201, body
    sid = json.loads(body)["id"]
    if not run:
        return (time.perf_counter() - started) * 1000, sid
    status, events = await client.request("POST", f"/v1/sandboxes/{sid}/commands", {"argv": ["true"]})
    assert b'"type":"end"' in events and b'"exit_code":0' in events, events
    return (time.perf_counter() - started) * 1000, sid


async def cycle(client: LeanClient) -> float:
    ms, sid = await create_and_exec(client)
    await client.request("DELETE", f"/v1/sandboxes/{sid}")
    return ms


async def pool_metric(client: LeanClient, name: str = "ready") -> int:
    status, body = await client.request("GET", "/metrics")
    assert status == 200, body
    gauges = pool_gauges(body.decode())
    assert name in gauges, f"the server exports no agentcell_sandbox_pool_{name}"
    return int(gauges[name])


async def wait_pool_full(client: LeanClient, size: int | None = None) -> None:
    """Until the pool holds `size` idle instances (default: as many as it means to hold)."""
    size = size if size is not None else await pool_metric(client, "target")
    deadline = time.monotonic() + 120
    while (ready := await pool_metric(client)) < size:
        assert time.monotonic() < deadline, f"the pool holds {ready} of {size} after 120 s"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # let the last refill's spawner work settle


async def burst(
    clients: list[LeanClient], server: int, *, run: bool = True
) -> tuple[list[float], float, float]:
    """50 create + first exec (or only the creates) at once: their latencies, and the server's and
    the node's CPU (ms) until the last one finished; then the sandboxes are killed."""
    before = cpu_ms(server, children=False), node_busy_ms() - own_cpu_ms()
    results = await asyncio.gather(*(create_and_exec(c, run=run) for c in clients))
    server_ms = cpu_ms(server, children=False) - before[0]
    node_ms = node_busy_ms() - own_cpu_ms() - before[1]
    await asyncio.gather(
        *(c.request("DELETE", f"/v1/sandboxes/{s}") for c, (_, s) in zip(clients, results, strict=True))
    )
    return [ms for ms, _ in results], server_ms, node_ms


async def measure(server: BenchServer, pool: int) -> Figures:
    clients = [LeanClient("127.0.0.1", server.port) for _ in range(CONCURRENT)]
    for client in clients:
        await client.__aenter__()
    figures = Figures()
    try:
        if pool:
            await wait_pool_full(clients[0], pool)
            figures.sequential = [await cycle(clients[0]) for _ in range(POOL_SEQUENTIAL)]
        else:
            for _ in range(3):
                await cycle(clients[0])
            figures.sequential = [await cycle(clients[0]) for _ in range(RUNS)]
        server_ms = node_ms = 0.0
        for _ in range(ROUNDS):
            if pool:
                await wait_pool_full(clients[0], pool)
            latencies, server_round_ms, node_round_ms = await burst(clients, server.pid)
            figures.concurrent += latencies
            server_ms += server_round_ms
            node_ms += node_round_ms
        figures.server_cpu_ms = server_ms / (ROUNDS * CONCURRENT)
        figures.node_cpu_ms = node_ms / (ROUNDS * CONCURRENT)
        if not pool:
            for _ in range(ROUNDS):
                await asyncio.sleep(0.5)  # the last round's instances are being stopped
                figures.create_only += (await burst(clients, server.pid, run=False))[0]
        return figures
    finally:
        for client in clients:
            await client.__aexit__()


def run_server(pool: int) -> Figures:
    with BenchServer(AGENTCELL_SANDBOX_POOL=str(pool)) as server:
        return asyncio.run(measure(server, pool))


async def default_pool_bursts(server: BenchServer) -> tuple[list[float], list[float]]:
    """With the default pool settings: the latencies of a first burst (the pool holds its floor),
    and of ROUNDS later ones, each once the pool has refilled to what it means to hold (grown for
    the burst it saw)."""
    clients = [LeanClient("127.0.0.1", server.port) for _ in range(CONCURRENT)]
    for client in clients:
        await client.__aenter__()
    try:
        for _ in range(3):
            await cycle(clients[0])
        await wait_pool_full(clients[0])
        first, _, _ = await burst(clients, server.pid)
        later: list[float] = []
        for _ in range(ROUNDS):
            await wait_pool_full(clients[0])
            later += (await burst(clients, server.pid))[0]
        return first, later
    finally:
        for client in clients:
            await client.__aexit__()


def run_default_server() -> tuple[list[float], list[float]]:
    with BenchServer() as server:
        return asyncio.run(default_pool_bursts(server))


def main() -> None:
    progress(f"{NAME}: baselines (raw unshare true, one by one and {CONCURRENT} at once)")
    raw = samples_ms(UNSHARE, RUNS)
    raw_p50, raw_p95, raw_p99 = median(raw), percentile(raw, 95), percentile(raw, 99)
    bursts = [ms for _ in range(ROUNDS) for ms in burst_ms(UNSHARE, CONCURRENT)]
    burst_p50, burst_p99 = median(bursts), percentile(bursts, 99)
    progress(f"{NAME}: pool off: {RUNS} sequential, then {ROUNDS} x {CONCURRENT} concurrent")
    cold = run_server(0)
    progress(f"{NAME}: pool of {POOL_SIZE}: {POOL_SEQUENTIAL} sequential, then {ROUNDS} x {CONCURRENT}")
    warm = run_server(POOL_SIZE)
    progress(f"{NAME}: default pool settings: a first burst of {CONCURRENT}, then {ROUNDS} more")
    default_first, default_later = run_default_server()
    emit(NAME, "sequential_p50_ms", median(cold.sequential), "ms", raw_p50)
    emit(NAME, "sequential_p95_ms", percentile(cold.sequential, 95), "ms", raw_p95)
    emit(NAME, "sequential_p99_ms", percentile(cold.sequential, 99), "ms", raw_p99)
    emit(NAME, "concurrent50_p50_ms", median(cold.concurrent), "ms", burst_p50)
    emit(NAME, "concurrent50_p99_ms", percentile(cold.concurrent, 99), "ms", burst_p99)
    emit(NAME, "concurrent50_create_only_p50_ms", median(cold.create_only), "ms", burst_p50)
    emit(NAME, "concurrent50_create_only_p99_ms", percentile(cold.create_only, 99), "ms", burst_p99)
    emit(NAME, "concurrent50_server_cpu_per_sandbox_ms", cold.server_cpu_ms, "ms")
    emit(NAME, "concurrent50_node_cpu_per_sandbox_ms", cold.node_cpu_ms, "ms")
    cold_p50, cold_p99 = median(cold.concurrent), percentile(cold.concurrent, 99)
    emit(NAME, "pool_sequential_p50_ms", median(warm.sequential), "ms", median(cold.sequential))
    emit(NAME, "pool_concurrent50_p50_ms", median(warm.concurrent), "ms", cold_p50)
    emit(NAME, "pool_concurrent50_p99_ms", percentile(warm.concurrent, 99), "ms", cold_p99)
    emit(NAME, "pool_concurrent50_server_cpu_per_sandbox_ms", warm.server_cpu_ms, "ms", cold.server_cpu_ms)
    emit(NAME, "pool_concurrent50_node_cpu_per_sandbox_ms", warm.node_cpu_ms, "ms", cold.node_cpu_ms)
    emit(NAME, "default_pool_first_burst_p99_ms", percentile(default_first, 99), "ms", cold_p99)
    emit(NAME, "default_pool_later_bursts_p50_ms", median(default_later), "ms", cold_p50)
    emit(NAME, "default_pool_later_bursts_p99_ms", percentile(default_later, 99), "ms", cold_p99)


if __name__ == "__main__":
    main()
