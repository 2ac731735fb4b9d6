"""affinity_load: 50 sessions x 200 requests at concurrency 50 through the gateway; every response
names the instance that served it, and all of a session's requests must land on the instance its
first one did (and no two sessions may share an exclusive instance). Throughput is compared with
the gateway's own floor at the same concurrency (GET /healthz, proxied to the control plane)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from bench.client import LeanClient
from bench.functions import deploy
from bench.report import emit, progress
from bench.server import BenchServer

NAME = "affinity_load"
SESSIONS = 50
REQUESTS = 200


async def one_session(client: LeanClient, key: str, owners: dict[str, str]) -> int:
    misrouted = 0
    for _ in range(REQUESTS):
        status, body = await client.request("GET", "/fn/aff/whoami", headers={"x-agentcell-session-id": key})
        assert status == 200, body
        instance = json.loads(body)["instance"]
        if owners.setdefault(key, instance) != instance:
            misrouted += 1
    return misrouted


async def floor(client: LeanClient) -> None:
    for _ in range(REQUESTS):
        await client.request("GET", "/healthz")


async def load(port: int) -> tuple[int, float, float]:
    clients = [LeanClient("127.0.0.1", port) for _ in range(SESSIONS)]
    for client in clients:
        await client.__aenter__()
    try:
        owners: dict[str, str] = {}
        keys = [f"load-{i}" for i in range(SESSIONS)]
        pairs = list(zip(clients, keys, strict=True))
        misrouted = sum(await asyncio.gather(*(one_session(c, k, owners) for c, k in pairs)))
        misrouted += SESSIONS - len(set(owners.values()))  # two sessions on one exclusive instance
        started = time.perf_counter()
        misrouted += sum(await asyncio.gather(*(one_session(c, k, owners) for c, k in pairs)))
        rate = SESSIONS * REQUESTS / (time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(floor(c) for c in clients))
        floor_rate = SESSIONS * REQUESTS / (time.perf_counter() - started)
        return misrouted, rate, floor_rate
    finally:
        for client in clients:
            await client.__aexit__()


def main() -> None:
    with BenchServer() as server, httpx.Client(base_url=server.url, timeout=60) as client:
        deploy(client, "aff", max_instances=SESSIONS + 5)
        progress(f"{NAME}: {SESSIONS} sessions x {REQUESTS} requests (binding pass, then the measured pass)")
        misrouted, rate, floor_rate = asyncio.run(load(server.port))
    emit(NAME, "misrouted_requests", misrouted, "count", None)
    emit(NAME, "requests_per_s", rate, "per_s", floor_rate)


if __name__ == "__main__":
    main()
