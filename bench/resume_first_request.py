"""resume_first_request: the first request of a resumed session whose 10 MB / 100-file workspace
comes back from the (local) object store before it is forwarded, against the first request of a
new session with nothing to restore, on the same warm pool in the same run (the baseline)."""

from __future__ import annotations

import time

import httpx

from bench.functions import deploy
from bench.report import emit, median, percentile, progress
from bench.server import BenchServer

NAME = "resume_first_request"
RUNS = 15
KEY = "x-agentcell-session-id"
WORKSPACE = {"persist": True, "sync_interval_s": 0}


def first_request_ms(client: httpx.Client, key: str) -> float:
    started = time.perf_counter()
    reply = client.get("/fn/resume/whoami", headers={KEY: key})
    elapsed = (time.perf_counter() - started) * 1000
    reply.raise_for_status()
    return elapsed


def end_session(client: httpx.Client, key: str) -> None:
    sessions = client.get("/v1/functions/resume/sessions").json()["sessions"]
    session_id = next(s["id"] for s in sessions if s["key"] == key)
    client.delete(f"/v1/sessions/{session_id}").raise_for_status()


def wait_warm(client: httpx.Client, count: int) -> None:
    while client.get("/v1/functions/resume").json()["warm_instances"] < count:
        time.sleep(0.02)


def main() -> None:
    with BenchServer() as server, httpx.Client(base_url=server.url, timeout=120) as client:
        deploy(client, "resume", min_warm=2, max_instances=RUNS * 2 + 4, workspace=WORKSPACE)
        resumed, fresh = [], []
        progress(f"{NAME}: {RUNS} resumes of a 10 MB / 100-file workspace")
        for i in range(RUNS):
            key = f"r{i}"
            populate: dict[str, str | int] = {"dir": "/home/user/proj", "seed": i, "files": 100, "kb": 100}
            client.get("/fn/resume/populate", params=populate, headers={KEY: key}).raise_for_status()
            end_session(client, key)
            wait_warm(client, 2)
            fresh.append(first_request_ms(client, f"fresh{i}"))
            wait_warm(client, 2)
            resumed.append(first_request_ms(client, key))
            tree = client.get("/fn/resume/tree", params={"dir": "/home/user/proj"}, headers={KEY: key}).json()
            assert sum(1 for entry in tree.values() if entry[0] == "file") >= 100, "restore lost files"
            end_session(client, key)
            end_session(client, f"fresh{i}")
    emit(NAME, "resume_first_request_p50_ms", median(resumed), "ms", median(fresh))
    emit(NAME, "resume_first_request_p95_ms", percentile(resumed, 95), "ms", percentile(fresh, 95))
    emit(NAME, "restore_share_p50_ms", median(resumed) - median(fresh), "ms", None)


if __name__ == "__main__":
    main()
