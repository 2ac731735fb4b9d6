"""mcp_cold: the first call of a new MCP session on a function with no instance (initialize through
the gateway, which starts an instance, its bridge and a stdio server), against the same bridge
started directly on the host and initialized (the baseline)."""

from __future__ import annotations

import time

import httpx

from bench.mcp_common import HostBridge, deploy_mcp, initialize
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "mcp_cold"
RUNS = 15


def direct_ms() -> float:
    bridge = HostBridge()
    try:
        with httpx.Client(timeout=30) as client:
            initialize(client, bridge.url + "/mcp")
        return (time.perf_counter() - bridge.started) * 1000
    finally:
        bridge.close()


def main() -> None:
    direct = [direct_ms() for _ in range(RUNS)]
    with BenchServer() as server, httpx.Client(base_url=server.url, timeout=60) as client:
        deploy_mcp(client, "cold", min_warm=0, max_instances=RUNS + 2)
        progress(f"{NAME}: {RUNS} cold first calls")
        cold = []
        for _ in range(RUNS):
            started = time.perf_counter()
            session_id = initialize(client, "/fn/cold/mcp")
            cold.append((time.perf_counter() - started) * 1000)
            client.delete("/fn/cold/mcp", headers={"mcp-session-id": session_id}).raise_for_status()
    emit(NAME, "first_call_p50_ms", median(cold), "ms", median(direct))
    emit(NAME, "first_call_p95_ms", percentile(cold, 95), "ms", percentile(direct, 95))


if __name__ == "__main__":
    main()
