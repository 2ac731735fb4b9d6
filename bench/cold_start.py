"""cold_start: create a sandbox → first exec finished, through the REST API.

Sequential (p50/p95/p99) and 50 at once (p99), against a raw namespace spawn of `true` (unshare).
"""

from __future__ import annotations

import asyncio
import json
import time

from bench.baselines import UNSHARE, samples_ms
from bench.client import LeanClient
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "cold_start"
RUNS = 60
CONCURRENT = 50


async def create_and_exec(client: LeanClient) -> tuple[float, str]:
    started = time.perf_counter()
    status, body = await client.request("POST", "/v1/sandboxes", {"timeout_s": 300})
    assert status == 201, body
    sid = json.loads(body)["id"]
    status, events = await client.request("POST", f"/v1/sandboxes/{sid}/commands", {"argv": ["true"]})
    assert b'"type":"end"' in events and b'"exit_code":0' in events, events
    return (time.perf_counter() - started) * 1000, sid


async def cycle(client: LeanClient) -> float:
    ms, sid = await create_and_exec(client)
    await client.request("DELETE", f"/v1/sandboxes/{sid}")
    return ms


async def measure(port: int) -> tuple[list[float], list[float]]:
    clients = [LeanClient("127.0.0.1", port) for _ in range(CONCURRENT)]
    for client in clients:
        await client.__aenter__()
    try:
        for _ in range(3):
            await cycle(clients[0])
        sequential = [await cycle(clients[0]) for _ in range(RUNS)]
        concurrent: list[float] = []
        for _ in range(3):
            results = await asyncio.gather(*(create_and_exec(c) for c in clients))
            concurrent += [ms for ms, _ in results]
            ids = [sid for _, sid in results]
            await asyncio.gather(
                *(c.request("DELETE", f"/v1/sandboxes/{s}") for c, s in zip(clients, ids, strict=True))
            )
        return sequential, concurrent
    finally:
        for client in clients:
            await client.__aexit__()


def main() -> None:
    progress(f"{NAME}: baseline (raw unshare true)")
    raw = samples_ms(UNSHARE, RUNS)
    raw_p50, raw_p95, raw_p99 = median(raw), percentile(raw, 95), percentile(raw, 99)
    with BenchServer() as server:
        progress(f"{NAME}: {RUNS} sequential, then 3 x {CONCURRENT} concurrent")
        sequential, concurrent = asyncio.run(measure(server.port))
    emit(NAME, "sequential_p50_ms", median(sequential), "ms", raw_p50)
    emit(NAME, "sequential_p95_ms", percentile(sequential, 95), "ms", raw_p95)
    emit(NAME, "sequential_p99_ms", percentile(sequential, 99), "ms", raw_p99)
    emit(NAME, "concurrent50_p50_ms", median(concurrent), "ms", raw_p50)
    emit(NAME, "concurrent50_p99_ms", percentile(concurrent, 99), "ms", raw_p99)


if __name__ == "__main__":
    main()
