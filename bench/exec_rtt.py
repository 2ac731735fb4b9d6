"""exec_rtt: `echo hi` round trip through the REST API into a running sandbox (a lean keep-alive
client, so the client's own cost does not count), against `subprocess.run(["echo", "hi"])` on the
host."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

from bench.client import LeanClient
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "exec_rtt"
RUNS = 300
WARMUP = 20


def host_echo_ms() -> float:
    started = time.perf_counter()
    subprocess.run(["echo", "hi"], check=True, stdout=subprocess.DEVNULL)
    return (time.perf_counter() - started) * 1000


async def measure(port: int) -> list[float]:
    async with LeanClient("127.0.0.1", port) as client:
        status, body = await client.request("POST", "/v1/sandboxes", {"timeout_s": 600})
        assert status == 201, body
        sid = json.loads(body)["id"]
        samples = []
        for _ in range(RUNS + WARMUP):
            started = time.perf_counter()
            command = {"argv": ["echo", "hi"]}
            _, events = await client.request("POST", f"/v1/sandboxes/{sid}/commands", command)
            samples.append((time.perf_counter() - started) * 1000)
            assert b'"data":"hi\\n"' in events, events
        await client.request("DELETE", f"/v1/sandboxes/{sid}")
        return samples[WARMUP:]


def main() -> None:
    baseline = [host_echo_ms() for _ in range(RUNS)]
    with BenchServer() as server:
        progress(f"{NAME}: {RUNS} x echo hi")
        samples = asyncio.run(measure(server.port))
    emit(NAME, "p50_ms", median(samples), "ms", median(baseline))
    emit(NAME, "p95_ms", percentile(samples, 95), "ms", percentile(baseline, 95))


if __name__ == "__main__":
    main()
