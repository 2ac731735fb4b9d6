"""exec_rtt: `echo hi` round trip through the REST API into a running sandbox,
against `subprocess.run(["echo", "hi"])` on the host."""

from __future__ import annotations

import subprocess
import time

import httpx

from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "exec_rtt"
RUNS = 300


def host_echo_ms() -> float:
    started = time.perf_counter()
    subprocess.run(["echo", "hi"], check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    baseline = [host_echo_ms() for _ in range(RUNS)]
    with BenchServer() as server, httpx.Client(base_url=server.url, timeout=60) as client:
        sid = client.post("/v1/sandboxes", json={"timeout_s": 600}).json()["id"]
        samples = []
        progress(f"{NAME}: {RUNS} x echo hi")
        for i in range(RUNS + 10):
            started = time.perf_counter()
            reply = client.post(f"/v1/sandboxes/{sid}/commands", json={"argv": ["echo", "hi"]})
            elapsed = (time.perf_counter() - started) * 1000
            assert '"data":"hi\\n"' in reply.text, reply.text
            if i >= 10:
                samples.append(elapsed)
        client.delete(f"/v1/sandboxes/{sid}")
    emit(NAME, "p50_ms", median(samples), "ms", median(baseline))
    emit(NAME, "p95_ms", percentile(samples, 95), "ms", percentile(baseline, 95))


if __name__ == "__main__":
    main()
