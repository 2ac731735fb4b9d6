"""affinity_load: 50 sessions x 200 requests at concurrency 50; every response names the instance
that served it, and every session's requests must all land on the instance its first one did.
Baseline for throughput: the same load sent straight to one instance... is not possible without
the gateway (instances have no network of their own), so the baseline is the gateway's own
control-plane floor (GET /healthz at the same concurrency)."""

from __future__ import annotations

import asyncio
import time

import httpx

from bench.functions import deploy
from bench.report import emit, progress
from bench.server import BenchServer

NAME = "affinity_load"
SESSIONS = 50
REQUESTS = 200


async def load(url: str) -> tuple[int, float, float]:
    limits = httpx.Limits(max_connections=SESSIONS, max_keepalive_connections=SESSIONS)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        owners: dict[str, str] = {}
        misrouted = 0

        async def session(i: int) -> None:
            nonlocal misrouted
            key = f"load-{i}"
            for _ in range(REQUESTS):
                reply = await client.get("/fn/aff/whoami", headers={"x-agentcell-session-id": key})
                instance = reply.json()["instance"]
                if owners.setdefault(key, instance) != instance:
                    misrouted += 1

        await asyncio.gather(*(session(i) for i in range(SESSIONS)))  # first pass binds (cold)
        owners_before = dict(owners)
        started = time.perf_counter()
        await asyncio.gather(*(session(i) for i in range(SESSIONS)))
        rate = SESSIONS * REQUESTS / (time.perf_counter() - started)
        if len(set(owners_before.values())) != SESSIONS:
            misrouted += SESSIONS - len(set(owners_before.values()))  # two sessions on one exclusive instance

        async def floor(_: int) -> None:
            for _ in range(REQUESTS):
                await client.get("/healthz")

        started = time.perf_counter()
        await asyncio.gather(*(floor(i) for i in range(SESSIONS)))
        floor_rate = SESSIONS * REQUESTS / (time.perf_counter() - started)
        return misrouted, rate, floor_rate


def main() -> None:
    with BenchServer() as server, httpx.Client(base_url=server.url, timeout=60) as client:
        deploy(client, "aff", max_instances=SESSIONS + 5)
        progress(f"{NAME}: {SESSIONS} sessions x {REQUESTS} requests, twice")
        misrouted, rate, floor_rate = asyncio.run(load(server.url))
    emit(NAME, "misrouted_requests", misrouted, "count", None)
    emit(NAME, "requests_per_s", rate, "per_s", floor_rate)


if __name__ == "__main__":
    main()
