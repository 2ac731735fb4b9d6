"""code_first: the first `run_code("1+1")` in a new sandbox — with the kernel pre-started at create
(`code_kernel: true`) and cold (the kernel starts on that call) — against a stock local ipykernel
driven by jupyter_client in the same run (first execute on a fresh kernel; start + first execute)."""

from __future__ import annotations

import asyncio
import json
import time

from bench.client import LeanClient
from bench.jupyter_baseline import start_and_first_ms
from bench.report import emit, median, progress
from bench.server import BenchServer

NAME = "code_first"
RUNS = 8


async def first_run_ms(client: LeanClient, prestart: bool) -> tuple[float, float]:
    """(first run_code, create + first run_code) of a new sandbox."""
    started = time.perf_counter()
    status, body = await client.request("POST", "/v1/sandboxes", {"timeout_s": 120, "code_kernel": prestart})
    assert status == 201, body
    sid = json.loads(body)["id"]
    run_started = time.perf_counter()
    status, events = await client.request("POST", f"/v1/sandboxes/{sid}/code", {"code": "1+1"})
    done = time.perf_counter()
    assert status == 200 and b'"text/plain":"2"' in events, events
    await client.request("DELETE", f"/v1/sandboxes/{sid}")
    return (done - run_started) * 1000, (done - started) * 1000


async def measure(port: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"warm": [], "cold": [], "cold_total": []}
    async with LeanClient("127.0.0.1", port) as client:
        await first_run_ms(client, prestart=True)  # the server's own first-use costs
        for _ in range(RUNS):
            found["warm"].append((await first_run_ms(client, prestart=True))[0])
            cold, total = await first_run_ms(client, prestart=False)
            found["cold"].append(cold)
            found["cold_total"].append(total)
    return found


def main() -> None:
    baseline = [start_and_first_ms() for _ in range(RUNS // 2)]
    with BenchServer() as server:
        progress(f"{NAME}: {RUNS} new sandboxes with a pre-started kernel, {RUNS} cold")
        found = asyncio.run(measure(server.port))
    raw_total = median([total for total, _ in baseline])
    raw_first = median([first for _, first in baseline])
    emit(NAME, "prestarted_first_run_p50_ms", median(found["warm"]), "ms", raw_first)
    emit(NAME, "cold_first_run_p50_ms", median(found["cold"]), "ms", raw_total)
    emit(NAME, "cold_create_and_first_run_p50_ms", median(found["cold_total"]), "ms", raw_total)


if __name__ == "__main__":
    main()
