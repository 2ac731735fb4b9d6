"""idle_memory: platform memory per idle sandbox, with 200 idle sandboxes, and how many idle
sandboxes this machine holds (2000 are created and must all answer).

Memory is measured as the drop in MemAvailable (kernel objects, tmpfs, cgroups, the init process
and the server's own growth all count), against 200 bare `unshare … sleep` namespace sandboxes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import httpx

from bench.baselines import UNSHARE
from bench.report import emit, progress
from bench.server import BenchServer

NAME = "idle_memory"
COUNT = 200
CAPACITY = int(os.environ.get("BENCH_IDLE_CAPACITY", "2000"))


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


async def measure(url: str) -> tuple[float, int]:
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await kill_all(client, await create_many(client, 10))  # warm the server's code paths
        before = settle()
        ids = await create_many(client, COUNT)
        per_sandbox = (before - settle()) / COUNT
        progress(f"{NAME}: {per_sandbox:.2f} MB each; now {CAPACITY} idle sandboxes")
        ids += await create_many(client, CAPACITY - COUNT)
        answered = len(ids) if await all_answer(client, ids) else 0
        await kill_all(client, ids)
        return per_sandbox, answered


def main() -> None:
    progress(f"{NAME}: baseline, {COUNT} bare namespace sandboxes")
    baseline = baseline_mb_each()
    # The pool off: its idle sandboxes would be started before the memory is first read and then
    # claimed, so they would not count.
    with BenchServer(AGENTCELL_MAX_SANDBOXES=str(CAPACITY + 10), AGENTCELL_SANDBOX_POOL="0") as server:
        per_sandbox, answered = asyncio.run(measure(server.url))
    emit(NAME, "platform_mb_per_idle_sandbox", per_sandbox, "MB", baseline)
    emit(NAME, "idle_sandboxes_all_answering", answered, "count", None)
    emit(NAME, "idle_sandboxes_fitting_24gib", 24 * 1024 / max(per_sandbox, 0.01), "count", None)


if __name__ == "__main__":
    main()
