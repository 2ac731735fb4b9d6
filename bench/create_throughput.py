"""create_throughput: sandboxes created per second for 30 s (16 clients, each create then kill),
against raw namespace spawns of `true` per second at the same concurrency."""

from __future__ import annotations

import asyncio
import os
import time

import httpx

from bench.baselines import UNSHARE
from bench.report import emit, progress
from bench.server import BenchServer

NAME = "create_throughput"
SECONDS = float(os.environ.get("BENCH_THROUGHPUT_S", "30"))
WORKERS = 16


async def raw_rate(seconds: float) -> float:
    deadline = time.monotonic() + seconds
    count = 0

    async def worker() -> None:
        nonlocal count
        while time.monotonic() < deadline:
            proc = await asyncio.create_subprocess_exec(*UNSHARE)
            await proc.wait()
            count += 1

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return count / seconds


async def create_rate(url: str, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    created = 0
    async with httpx.AsyncClient(
        base_url=url, timeout=120, limits=httpx.Limits(max_connections=WORKERS + 2)
    ) as client:

        async def worker() -> None:
            nonlocal created
            while time.monotonic() < deadline:
                reply = await client.post(
                    "/v1/sandboxes", json={"timeout_s": 60, "memory_mb": 64, "disk_mb": 16}
                )
                reply.raise_for_status()
                created += 1
                await client.delete(f"/v1/sandboxes/{reply.json()['id']}")

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        return created / (time.monotonic() - started)


def main() -> None:
    progress(f"{NAME}: raw unshare for {SECONDS / 3:g} s")
    baseline = asyncio.run(raw_rate(SECONDS / 3))
    with BenchServer() as server:
        progress(f"{NAME}: create+kill for {SECONDS:g} s")
        rate = asyncio.run(create_rate(server.url, SECONDS))
    emit(NAME, "creates_per_s", rate, "per_s", baseline)


if __name__ == "__main__":
    main()
