"""session_create: pre-warmed session creation — p50 latency and throughput.

Exclusive sessions claim instances from a warm pool (min_warm); shared sessions
(sessions_per_instance=200) claim slots on running instances. Baseline: GET /healthz on the same
server (the HTTP floor of any control-plane call).
"""

from __future__ import annotations

import asyncio
import time

import httpx

from bench.functions import deploy
from bench.report import emit, median, progress
from bench.server import BenchServer

NAME = "session_create"
WARM = 40
SHARED = 600


def wait_warm(client: httpx.Client, name: str, count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        # a pre-warm session on a full pool would start a new instance; peek via a throwaway count
        info = client.get(f"/v1/functions/{name}").json()
        if info.get("warm_instances", 0) >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"warm pool of {name} never reached {count}")


def timed_creates(client: httpx.Client, name: str, count: int) -> list[float]:
    samples = []
    for i in range(count):
        started = time.perf_counter()
        reply = client.post(f"/v1/functions/{name}/sessions", json={"key": f"s{i}"})
        samples.append((time.perf_counter() - started) * 1000)
        reply.raise_for_status()
    return samples


async def burst(url: str, name: str, count: int, concurrency: int = 16) -> float:
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=httpx.Limits(max_connections=concurrency)
    ) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with semaphore:
                reply = await client.post(f"/v1/functions/{name}/sessions", json={"key": f"b{i}"})
                reply.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        return count / (time.perf_counter() - started)


def main() -> None:
    with BenchServer() as server, httpx.Client(base_url=server.url, timeout=120) as client:
        floor = []
        for _ in range(200):
            started = time.perf_counter()
            client.get("/healthz")
            floor.append((time.perf_counter() - started) * 1000)
        deploy(client, "excl", min_warm=WARM, max_instances=WARM * 3)
        progress(f"{NAME}: waiting for {WARM} warm instances")
        wait_warm(client, "excl", WARM)
        exclusive = timed_creates(client, "excl", WARM)
        deploy(client, "shared", sessions_per_instance=200, min_warm=3, max_instances=10)
        wait_warm(client, "shared", 3)
        shared = timed_creates(client, "shared", 100)
        progress(f"{NAME}: burst of {SHARED} shared sessions")
        rate = asyncio.run(burst(server.url, "shared", SHARED))
    emit(NAME, "exclusive_warm_p50_ms", median(exclusive), "ms", median(floor))
    emit(NAME, "shared_p50_ms", median(shared), "ms", median(floor))
    emit(NAME, "shared_per_s", rate, "per_s", 1000 / median(floor))


if __name__ == "__main__":
    main()
