"""mcp_cold: the first call of a new MCP session on a function with no instance (initialize through
the gateway, which starts an instance, its bridge and a stdio server), against the same bridge
started directly on the host and initialized (the baseline).

Also a new session on a warm instance (`new_session_warm_shared_p50_ms`): with `stdio_process:
shared` (the instance's one stdio process answers it) against the default, where each session
starts a process of its own (the baseline), the two interleaved. The fixture's python3 starts in
~20 ms; a server started by `npx` takes seconds, which is what `shared` saves."""

from __future__ import annotations

import time

import httpx

from bench.mcp_common import JSON_AND_SSE, WHOAMI, HostBridge, deploy_mcp, initialize
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "mcp_cold"
RUNS = 15
WARM_RUNS = 40


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
        own, shared = new_sessions_on_a_warm_instance(client)
    emit(NAME, "first_call_p50_ms", median(cold), "ms", median(direct))
    emit(NAME, "first_call_p95_ms", percentile(cold, 95), "ms", percentile(direct, 95))
    emit(NAME, "new_session_warm_shared_p50_ms", median(shared), "ms", median(own))
    emit(NAME, "new_session_warm_own_p50_ms", median(own), "ms")


def new_sessions_on_a_warm_instance(client: httpx.Client) -> tuple[list[float], list[float]]:
    """(ms per new session with a process of its own, ms with the shared process), each an
    initialize and its first tool call on an instance already up, alternating."""
    warm = {"min_warm": 1, "max_instances": 1, "sessions_per_instance": 4}
    deploy_mcp(client, "warm-own", **warm)
    deploy_mcp(client, "warm-shared", stdio_process="shared", **warm)
    progress(f"{NAME}: {WARM_RUNS} new sessions on a warm instance, own process and shared")
    samples: dict[str, list[float]] = {"warm-own": [], "warm-shared": []}
    for function in samples:
        initialize(client, f"/fn/{function}/mcp")  # the instance is up and (shared) its process too
    for _ in range(WARM_RUNS):
        for function, into in samples.items():
            started = time.perf_counter()
            session_id = initialize(client, f"/fn/{function}/mcp")
            call(client, f"/fn/{function}/mcp", session_id)
            into.append((time.perf_counter() - started) * 1000)
            client.delete(f"/fn/{function}/mcp", headers={"mcp-session-id": session_id}).raise_for_status()
    return samples["warm-own"], samples["warm-shared"]


def call(client: httpx.Client, url: str, session_id: str) -> None:
    headers = {**JSON_AND_SSE, "mcp-session-id": session_id}
    client.post(url, json=WHOAMI, headers=headers).raise_for_status()


if __name__ == "__main__":
    main()
