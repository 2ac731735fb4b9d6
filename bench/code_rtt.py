"""code_rtt: warm `run_code("1+1")` round trip through the REST API (a lean keep-alive client, and
the SDK), against raw jupyter_client execute on a stock local ipykernel started in the same run.
Blocks of the two alternate, so that a noisy neighbour hits both alike."""

from __future__ import annotations

import asyncio
import json
import time

from bench.client import LeanClient
from bench.jupyter_baseline import execute_ms, local_kernel
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "code_rtt"
BLOCKS = 6
BLOCK = 50
WARMUP = 20


async def ours_block(client: LeanClient, path: str, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        status, events = await client.request("POST", path, {"code": "1+1"})
        samples.append((time.perf_counter() - started) * 1000)
        assert status == 200 and b'"text/plain":"2"' in events, events
    return samples


async def sdk_samples(url: str, runs: int) -> list[float]:
    from agentcell.client import AsyncSandbox

    samples = []
    async with AsyncSandbox.create(api_url=url, code_kernel=True, timeout_s=600) as sbx:
        for _ in range(runs + WARMUP):
            started = time.perf_counter()
            execution = await sbx.run_code("1+1")
            samples.append((time.perf_counter() - started) * 1000)
            assert execution.text == "2", execution
    return samples[WARMUP:]


async def measure(port: int) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    raw: list[float] = []
    with local_kernel() as kernel:
        async with LeanClient("127.0.0.1", port) as client:
            create = {"timeout_s": 600, "code_kernel": True}
            status, body = await client.request("POST", "/v1/sandboxes", create)
            assert status == 201, body
            sid = json.loads(body)["id"]
            path = f"/v1/sandboxes/{sid}/code"
            await ours_block(client, path, WARMUP)
            for _ in range(WARMUP):
                execute_ms(kernel)
            for _ in range(BLOCKS):
                ours += await ours_block(client, path, BLOCK)
                raw += [execute_ms(kernel) for _ in range(BLOCK)]
            await client.request("DELETE", f"/v1/sandboxes/{sid}")
    return ours, raw


def main() -> None:
    with BenchServer() as server:
        progress(f"{NAME}: {BLOCKS * BLOCK} x run_code('1+1'), alternating with raw jupyter_client")
        ours, raw = asyncio.run(measure(server.port))
        sdk = asyncio.run(sdk_samples(server.url, BLOCKS * BLOCK // 2))
    emit(NAME, "p50_ms", median(ours), "ms", median(raw))
    emit(NAME, "p99_ms", percentile(ours, 99), "ms", percentile(raw, 99))
    emit(NAME, "sdk_p50_ms", median(sdk), "ms", median(raw))


if __name__ == "__main__":
    main()
