"""cold_start: create a sandbox → first exec finished, through the REST API.

Sequential (p50/p95/p99) and 50 at once (p99), against a raw namespace spawn of `true` (unshare).
"""

from __future__ import annotations

import asyncio
import time

import httpx

from bench.baselines import UNSHARE, samples_ms
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "cold_start"
RUNS = 60
CONCURRENT = 50


async def create_and_exec(client: httpx.AsyncClient) -> tuple[float, str]:
    started = time.perf_counter()
    reply = await client.post("/v1/sandboxes", json={"timeout_s": 300})
    reply.raise_for_status()
    sid = reply.json()["id"]
    run = await client.post(f"/v1/sandboxes/{sid}/commands", json={"argv": ["true"]})
    assert '"type":"end"' in run.text and '"exit_code":0' in run.text, run.text
    return (time.perf_counter() - started) * 1000, sid


async def measure(url: str) -> tuple[list[float], list[float]]:
    limits = httpx.Limits(max_connections=CONCURRENT + 5, max_keepalive_connections=CONCURRENT + 5)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        for _ in range(3):
            _, sid = await create_and_exec(client)
            await client.delete(f"/v1/sandboxes/{sid}")
        sequential = []
        for _ in range(RUNS):
            ms, sid = await create_and_exec(client)
            sequential.append(ms)
            await client.delete(f"/v1/sandboxes/{sid}")
        concurrent: list[float] = []
        for _ in range(3):
            results = await asyncio.gather(*(create_and_exec(client) for _ in range(CONCURRENT)))
            concurrent += [ms for ms, _ in results]
            await asyncio.gather(*(client.delete(f"/v1/sandboxes/{sid}") for _, sid in results))
        return sequential, concurrent


def main() -> None:
    progress(f"{NAME}: baseline (raw unshare true)")
    raw = samples_ms(UNSHARE, RUNS)
    raw_p50, raw_p99 = median(raw), percentile(raw, 99)
    with BenchServer() as server:
        progress(f"{NAME}: {RUNS} sequential, then 3 x {CONCURRENT} concurrent")
        sequential, concurrent = asyncio.run(measure(server.url))
    emit(NAME, "sequential_p50_ms", median(sequential), "ms", raw_p50)
    emit(NAME, "sequential_p95_ms", percentile(sequential, 95), "ms", percentile(raw, 95))
    emit(NAME, "sequential_p99_ms", percentile(sequential, 99), "ms", raw_p99)
    emit(NAME, "concurrent50_p50_ms", median(concurrent), "ms", raw_p50)
    emit(NAME, "concurrent50_p99_ms", percentile(concurrent, 99), "ms", raw_p99)


if __name__ == "__main__":
    main()
