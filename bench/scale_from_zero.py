"""scale_from_zero: first response of a new session on a function with no instance, minus the time
its server needs to start listening on its own (measured in the same run by starting the same
server directly on the host and polling its port)."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import httpx

from bench.functions import ECHO_DIR, deploy
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer, free_port

NAME = "scale_from_zero"
RUNS = 20


def direct_start_ms() -> float:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        ["/usr/bin/python3", str(ECHO_DIR / "app.py")],
        env={**os.environ, "PORT": str(port)},
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.001)
        with httpx.Client() as client:
            client.get(f"http://127.0.0.1:{port}/whoami").raise_for_status()
        return (time.perf_counter() - started) * 1000
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    direct = [direct_start_ms() for _ in range(RUNS)]
    server_ms = median(direct)
    with BenchServer() as server, httpx.Client(base_url=server.url, timeout=60) as client:
        deploy(client, "cold", min_warm=0, max_instances=RUNS + 5)
        samples = []
        progress(f"{NAME}: {RUNS} cold first requests (server alone: {server_ms:.1f} ms)")
        for i in range(RUNS):
            started = time.perf_counter()
            reply = client.get("/fn/cold/whoami", headers={"x-agentcell-session-id": f"cold-{i}"})
            samples.append((time.perf_counter() - started) * 1000)
            reply.raise_for_status()
            client.delete(f"/v1/sessions/{_session_id(client, f'cold-{i}')}")
    total = median(samples)
    emit(NAME, "first_response_p50_ms", total, "ms", server_ms)
    emit(NAME, "first_response_p95_ms", percentile(samples, 95), "ms", percentile(direct, 95))
    emit(NAME, "platform_share_p50_ms", total - server_ms, "ms", None)


def _session_id(client: httpx.Client, key: str) -> str:
    sessions = client.get("/v1/functions/cold/sessions").json()["sessions"]
    found: str = next(s["id"] for s in sessions if s["key"] == key)
    return found


if __name__ == "__main__":
    main()
