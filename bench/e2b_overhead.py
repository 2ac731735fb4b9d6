"""e2b_overhead: `sbx.commands.run("echo hi")` through the official E2B SDK (AsyncSandbox, pointed at
agentcell's E2B API by environment variables) against the same command through agentcell's own
SDK (`agentcell.client.AsyncSandbox`), interleaved in one run on one server.

E2B's SDK runs every command as `/bin/bash -l -c <cmd>` (a login shell), so the baseline runs that
same argv: the ratio is the cost of the compatibility layer (Connect framing, the E2B SDK's client
stack), not of a different process. A second metric compares with our plain `bash -c`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable

from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "e2b_overhead"
RUNS = 200
WARMUP = 20
LOGIN_SHELL = ["/bin/bash", "-l", "-c", "echo hi"]


async def timed(run: Awaitable[object]) -> float:
    started = time.perf_counter()
    await run
    return (time.perf_counter() - started) * 1000


async def measure(url: str) -> tuple[list[float], list[float], list[float]]:
    from e2b import AsyncSandbox as E2bSandbox

    from agentcell.client import AsyncSandbox

    os.environ.update(
        E2B_API_KEY="bench",
        E2B_API_URL=f"{url}/e2b",
        E2B_SANDBOX_URL=f"{url}/e2b",
        E2B_CONNECTION_RETRIES="0",
    )
    e2b_sbx = await E2bSandbox.create(timeout=600)
    ours = await AsyncSandbox.create(api_url=url, timeout_s=600)
    e2b_ms, ours_ms, plain_ms = [], [], []
    try:
        for i in range(RUNS + WARMUP):
            sample_e2b = await timed(e2b_sbx.commands.run("echo hi"))
            sample_ours = await timed(ours.commands.run(LOGIN_SHELL))
            sample_plain = await timed(ours.commands.run("echo hi"))
            if i >= WARMUP:
                e2b_ms.append(sample_e2b)
                ours_ms.append(sample_ours)
                plain_ms.append(sample_plain)
        assert (await e2b_sbx.commands.run("echo hi")).stdout == "hi\n"
    finally:
        await e2b_sbx.kill()
        await ours.kill()
        await ours.aclose()
    return e2b_ms, ours_ms, plain_ms


def main() -> None:
    with BenchServer() as server:
        progress(f"{NAME}: {RUNS} x echo hi through the E2B SDK and through agentcell's SDK")
        e2b_ms, ours_ms, plain_ms = asyncio.run(measure(server.url))
    emit(NAME, "p50_ms", median(e2b_ms), "ms", median(ours_ms))
    emit(NAME, "p95_ms", percentile(e2b_ms, 95), "ms", percentile(ours_ms, 95))
    emit(NAME, "p50_vs_plain_bash_ms", median(e2b_ms), "ms", median(plain_ms))


if __name__ == "__main__":
    main()
