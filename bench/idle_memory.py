"""idle_memory: platform memory per idle sandbox, with 200 idle sandboxes, and how many idle
sandboxes this machine holds (2000 are created and must all answer).

Memory is measured as the drop in MemAvailable (kernel objects, tmpfs, cgroups, the init process
and the server's own growth all count), against 200 bare `unshare … sleep` namespace sandboxes.

While the 2000 are idle, a client asks `/healthz` every 5 ms through several metering passes (the
server meters every USAGE_INTERVAL_S here, every 60 s by default; a pass reads each sandbox's cgroup
counters): the slowest and the p99 answer, against the same pings before any sandbox existed.
Then `GET /v1/sandboxes` with the 2000: its first page and a walk of every page (median of
LIST_ROUNDS), against a `/healthz` answered on the same connection at the same time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import Any

import httpx

from bench.baselines import UNSHARE
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "idle_memory"
COUNT = 200
CAPACITY = int(os.environ.get("BENCH_IDLE_CAPACITY", "2000"))
USAGE_INTERVAL_S = 4
PING_S = 3 * USAGE_INTERVAL_S
LIST_ROUNDS = 10


def mem_available_mb() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def settle() -> float:
    time.sleep(1.0)
    return mem_available_mb()


def baseline_mb_each() -> float:
    before = settle()
    # --kill-child: killing unshare must take its forked child (the namespace's init) with it
    procs = [subprocess.Popen([*UNSHARE[:-1], "--kill-child", "sleep", "3600"]) for _ in range(COUNT)]
    after = settle()
    for proc in procs:
        proc.kill()
        proc.wait()
    return (before - after) / COUNT


async def create_many(client: httpx.AsyncClient, count: int) -> list[str]:
    ids: list[str] = []
    semaphore = asyncio.Semaphore(16)

    async def one() -> None:
        async with semaphore:
            reply = await client.post(
                "/v1/sandboxes", json={"timeout_s": 3600, "memory_mb": 64, "disk_mb": 16}
            )
            reply.raise_for_status()
            ids.append(reply.json()["id"])

    await asyncio.gather(*(one() for _ in range(count)))
    return ids


async def all_answer(client: httpx.AsyncClient, ids: list[str]) -> bool:
    semaphore = asyncio.Semaphore(16)

    async def ok(sid: str) -> bool:
        async with semaphore:
            reply = await client.post(f"/v1/sandboxes/{sid}/commands", json={"argv": ["true"]})
            return '"exit_code":0' in reply.text

    return all(await asyncio.gather(*(ok(s) for s in ids)))


async def kill_all(client: httpx.AsyncClient, ids: list[str]) -> None:
    semaphore = asyncio.Semaphore(16)

    async def kill(sid: str) -> None:
        async with semaphore:
            await client.delete(f"/v1/sandboxes/{sid}")

    await asyncio.gather(*(kill(s) for s in ids))


async def pings_ms(client: httpx.AsyncClient) -> list[float]:
    """A GET /healthz every 5 ms for PING_S: each one's round trip (ms)."""
    samples: list[float] = []
    deadline = time.monotonic() + PING_S
    while time.monotonic() < deadline:
        started = time.perf_counter()
        (await client.get("/healthz")).raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.005)
    return samples


async def timed_ms(client: httpx.AsyncClient, path: str) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    reply = await client.get(path)
    reply.raise_for_status()
    return (time.perf_counter() - started) * 1000, reply.json()


async def listing_ms(client: httpx.AsyncClient) -> tuple[float, float, float]:
    """Medians over LIST_ROUNDS: the first page of `GET /v1/sandboxes`, a walk of all its pages,
    and a `/healthz` (the baseline)."""
    first, walks, health = [], [], []
    for _ in range(LIST_ROUNDS):
        health.append((await timed_ms(client, "/healthz"))[0])
        took, page = await timed_ms(client, "/v1/sandboxes")
        first.append(took)
        while page["next_token"] is not None:
            more, page = await timed_ms(client, f"/v1/sandboxes?next_token={page['next_token']}")
            took += more
        walks.append(took)
    return median(first), median(walks), median(health)


async def measure(url: str) -> tuple[float, int, list[float], list[float], tuple[float, float, float]]:
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await kill_all(client, await create_many(client, 10))  # warm the server's code paths
        empty = await pings_ms(client)
        before = settle()
        ids = await create_many(client, COUNT)
        per_sandbox = (before - settle()) / COUNT
        progress(f"{NAME}: {per_sandbox:.2f} MB each; now {CAPACITY} idle sandboxes")
        ids += await create_many(client, CAPACITY - COUNT)
        full = await pings_ms(client)
        listing = await listing_ms(client)
        answered = len(ids) if await all_answer(client, ids) else 0
        await kill_all(client, ids)
        return per_sandbox, answered, empty, full, listing


def main() -> None:
    progress(f"{NAME}: baseline, {COUNT} bare namespace sandboxes")
    baseline = baseline_mb_each()
    # The pool off: its idle sandboxes would be started before the memory is first read and then
    # claimed, so they would not count.
    env = {"AGENTCELL_USAGE_INTERVAL_S": str(USAGE_INTERVAL_S)}
    with BenchServer(AGENTCELL_MAX_SANDBOXES=str(CAPACITY + 10), AGENTCELL_SANDBOX_POOL="0", **env) as server:
        per_sandbox, answered, empty, full, (first_page, walk, health) = asyncio.run(measure(server.url))
    emit(NAME, "platform_mb_per_idle_sandbox", per_sandbox, "MB", baseline)
    emit(NAME, "idle_sandboxes_all_answering", answered, "count", None)
    emit(NAME, "idle_sandboxes_fitting_24gib", 24 * 1024 / max(per_sandbox, 0.01), "count", None)
    emit(NAME, f"request_max_ms_{CAPACITY}_idle_metered", max(full), "ms", max(empty))
    emit(NAME, f"request_p99_ms_{CAPACITY}_idle_metered", percentile(full, 99), "ms", percentile(empty, 99))
    emit(NAME, f"list_first_page_ms_{CAPACITY}_idle", first_page, "ms", health)
    emit(NAME, f"list_all_pages_ms_{CAPACITY}_idle", walk, "ms", health)


if __name__ == "__main__":
    main()
