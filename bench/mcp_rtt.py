"""mcp_rtt: an MCP tool call round trip (tools/call over Streamable HTTP, warm session) through the
gateway to a bridged stdio server in an instance, against the same bridge and server run directly
on the host (the baseline), both over one keep-alive connection with a lean client."""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

from bench.client import LeanClient
from bench.mcp_common import JSON_AND_SSE, WHOAMI, HostBridge, deploy_mcp, initialize
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "mcp_rtt"
CALLS = 1000


async def round_trips(port: int, path: str, session_id: str) -> list[float]:
    headers = {**JSON_AND_SSE, "mcp-session-id": session_id, "mcp-protocol-version": "2025-11-25"}
    samples = []
    async with LeanClient("127.0.0.1", port) as client:
        for _ in range(CALLS):
            started = time.perf_counter()
            status, _ = await client.request("POST", path, WHOAMI, headers)
            samples.append((time.perf_counter() - started) * 1000)
            assert status == 200, status
    return samples[CALLS // 10 :]


def main() -> None:
    direct_bridge = HostBridge()
    try:
        with httpx.Client(timeout=30) as client:
            direct_session = initialize(client, direct_bridge.url + "/mcp")
        progress(f"{NAME}: {CALLS} tool calls direct")
        direct = asyncio.run(round_trips(direct_bridge.port, "/mcp", direct_session))
    finally:
        direct_bridge.close()
    with BenchServer() as server, httpx.Client(base_url=server.url, timeout=60) as client:
        deploy_mcp(client, "rtt", min_warm=1)
        session_id = initialize(client, "/fn/rtt/mcp")
        progress(f"{NAME}: {CALLS} tool calls through the gateway")
        gateway = asyncio.run(round_trips(server.port, "/fn/rtt/mcp", session_id))
    emit(NAME, "tool_call_p50_ms", median(gateway), "ms", median(direct))
    emit(NAME, "tool_call_p99_ms", percentile(gateway, 99), "ms", percentile(direct, 99))


if __name__ == "__main__":
    sys.exit(main())
