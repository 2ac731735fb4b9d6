"""mcp_rtt: an MCP tool call round trip (tools/call over Streamable HTTP, warm session) through the
gateway to a server in an instance, against the same server run directly on the host (the
baseline), both over one keep-alive connection with a lean client. Two servers:

- the bridged stdio fixture (standard library, answers in ~0.25 ms): the worst case, where the
  gateway's hop is a large share of the call (`tool_call_p50_ms`, `tool_call_p99_ms`);
- a server written with the official `mcp` SDK (Streamable HTTP under uvicorn, ~0.9 ms per call),
  what a deployed MCP server typically is (`tool_call_sdk_p50_ms`, `tool_call_sdk_p99_ms`).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.client import LeanClient
from bench.mcp_common import (
    JSON_AND_SSE,
    WHOAMI,
    HostBridge,
    deploy_mcp,
    deploy_sdk_mcp,
    initialize,
    sdk_server_dir,
)
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
    stdio_fixture()
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
        sdk_server(sdk_server_dir(Path(tmp)))


def stdio_fixture() -> None:
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


def sdk_server(directory: Path) -> None:
    host = HostBridge(sdk_dir=directory)
    try:
        with httpx.Client(timeout=30) as client:
            direct_session = initialize(client, host.url + "/mcp")
        progress(f"{NAME}: {CALLS} tool calls to the SDK server, direct")
        direct = asyncio.run(round_trips(host.port, "/mcp", direct_session))
    finally:
        host.close()
    with BenchServer() as server, httpx.Client(base_url=server.url, timeout=60) as client:
        deploy_sdk_mcp(client, "sdk", directory)
        session_id = initialize(client, "/fn/sdk/mcp")
        progress(f"{NAME}: {CALLS} tool calls to the SDK server through the gateway")
        gateway = asyncio.run(round_trips(server.port, "/fn/sdk/mcp", session_id))
    emit(NAME, "tool_call_sdk_p50_ms", median(gateway), "ms", median(direct))
    emit(NAME, "tool_call_sdk_p99_ms", percentile(gateway, 99), "ms", percentile(direct, 99))


if __name__ == "__main__":
    sys.exit(main())
