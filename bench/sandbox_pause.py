"""sandbox_pause: pause (persist-and-stop) and resume (start-and-restore) through the REST API, of
a sandbox whose /home/user holds 1 MiB of random bytes and 100 small text files; the baseline is
the create of that same sandbox in the same run, so the ratio is what saving (pause) or restoring
(resume) the files costs against a plain start."""

from __future__ import annotations

import asyncio
import json
import time

from bench.client import LeanClient
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "sandbox_pause"
RUNS = 30
FILL = "head -c 1048576 /dev/urandom > data.bin && mkdir t && for i in $(seq 100); do seq 200 > t/$i; done"


async def timed(client: LeanClient, method: str, path: str, body: object = None) -> tuple[float, bytes]:
    started = time.perf_counter()
    status, answer = await client.request(method, path, body)
    assert status in (200, 201, 204), (status, answer)
    return (time.perf_counter() - started) * 1000, answer


async def measure(port: int) -> tuple[list[float], list[float], list[float]]:
    creates: list[float] = []
    pauses: list[float] = []
    resumes: list[float] = []
    async with LeanClient("127.0.0.1", port) as client:
        for _ in range(RUNS):
            took, answer = await timed(client, "POST", "/v1/sandboxes", {"timeout_s": 600})
            creates.append(took)
            path = f"/v1/sandboxes/{json.loads(answer)['id']}"
            _, events = await timed(client, "POST", f"{path}/commands", {"cmd": FILL})
            assert b'"exit_code":0' in events, events
            pauses.append((await timed(client, "POST", f"{path}/pause"))[0])
            resumes.append((await timed(client, "POST", f"{path}/resume"))[0])
            _, listing = await timed(client, "GET", f"{path}/files/list?path=t")
            assert listing.count(b'"name"') == 100, listing
            await timed(client, "DELETE", path)
    return creates, pauses, resumes


def main() -> None:
    with BenchServer() as server:
        progress(f"{NAME}: {RUNS} x create, fill 1 MiB + 100 files, pause, resume, kill")
        creates, pauses, resumes = asyncio.run(measure(server.port))
    for metric, samples in (("pause", pauses), ("resume", resumes)):
        emit(NAME, f"{metric}_p50_ms", median(samples), "ms", median(creates))
        emit(NAME, f"{metric}_p95_ms", percentile(samples, 95), "ms", percentile(creates, 95))


if __name__ == "__main__":
    main()
