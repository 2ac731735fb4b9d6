"""mcp_rtt: an MCP tool call round trip (tools/call over Streamable HTTP, warm session) through the
gateway to a server in an instance, against the same instance reached directly (the baseline: a
socket opened inside the instance's network namespace, as the gateway's own are), each over one
keep-alive connection with a lean client, the two paths interleaved call by call. Two servers:

- the bridged stdio fixture (standard library, answers in ~0.25 ms): the worst case, where the
  gateway's hop is a large share of the call (`tool_call_p50_ms`, `tool_call_p99_ms`);
- a server written with the official `mcp` SDK (Streamable HTTP under uvicorn, ~0.9 ms per call),
  what a deployed MCP server typically is (`tool_call_sdk_p50_ms`, `tool_call_sdk_p99_ms`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from agentcell.server.sandbox.linux.netns import NetnsSockets
from bench.client import LeanClient
from bench.mcp_common import (
    JSON_AND_SSE,
    WHOAMI,
    deploy_mcp,
    deploy_sdk_mcp,
    initialize,
    sdk_server_dir,
)
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "mcp_rtt"
CALLS = 1000
HEADERS = {**JSON_AND_SSE, "mcp-protocol-version": "2025-11-25"}


@dataclass(slots=True)
class Target:
    port: int
    path: str
    session_id: str


async def interleaved(instance_id: str, gateway: Target) -> tuple[list[float], list[float]]:
    """CALLS tool calls on each path, alternating one by one over two keep-alive connections, so
    that both see the same machine (this VM's latency drifts between runs): one straight into the
    instance's server, through a socket made in its network namespace as the gateway's driver
    makes its own, one through the gateway. Round trips in ms, the first tenth (warm-up) dropped."""
    pid, port = instance_server(instance_id)
    sockets, pidfd = NetnsSockets(), os.pidfd_open(pid)
    try:
        direct = await sockets.connect(pidfd, port)
    finally:
        os.close(pidfd)
        sockets.close()
    samples: tuple[list[float], list[float]] = ([], [])
    inside = Target(0, "/mcp", gateway.session_id)
    async with LeanClient(sock=direct) as one, LeanClient("127.0.0.1", gateway.port) as other:
        for _ in range(CALLS):
            for client, target, into in ((one, inside, samples[0]), (other, gateway, samples[1])):
                headers = {**HEADERS, "mcp-session-id": target.session_id}
                started = time.perf_counter()
                status, _ = await client.request("POST", target.path, WHOAMI, headers)
                into.append((time.perf_counter() - started) * 1000)
                assert status == 200, status
    return samples[0][CALLS // 10 :], samples[1][CALLS // 10 :]


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
        directory = sdk_server_dir(Path(tmp))
        with BenchServer() as server, httpx.Client(base_url=server.url, timeout=60) as client:
            deploy_mcp(client, "rtt")  # no warm pool: nothing else starts while calls are timed
            deploy_sdk_mcp(client, "sdk", directory)
            measure(client, server, "rtt", "")
            measure(client, server, "sdk", "_sdk")


def measure(client: httpx.Client, server: BenchServer, function: str, suffix: str) -> None:
    """One session's calls through the gateway and straight into its instance, interleaved."""
    path = f"/fn/{function}/mcp"
    gateway = Target(server.port, path, initialize(client, path))
    instance = client.get(f"/v1/functions/{function}/sessions").json()["sessions"][0]["instance_id"]
    progress(f"{NAME}: {CALLS} tool calls each, through the gateway and direct{suffix}")
    direct_ms, gateway_ms = asyncio.run(interleaved(instance, gateway))
    emit(NAME, f"tool_call{suffix}_p50_ms", median(gateway_ms), "ms", median(direct_ms))
    emit(NAME, f"tool_call{suffix}_p99_ms", percentile(gateway_ms, 99), "ms", percentile(direct_ms, 99))


def instance_server(instance_id: str) -> tuple[int, int]:
    """(host pid, $PORT) of a process of the instance that was given a PORT (its server)."""
    for procs in Path("/sys/fs/cgroup/pids").glob(f"agentcell-*/{instance_id}/cgroup.procs"):
        for pid in procs.read_text().split():
            with contextlib.suppress(OSError):
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                port = next((e[5:] for e in env if e.startswith(b"PORT=")), None)
                if port:
                    return int(pid), int(port)
    raise RuntimeError(f"no server process found in instance {instance_id}")
