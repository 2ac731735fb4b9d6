"""mcp_idle_cost: 1000 deployed MCP functions with no session: the server's memory growth and the
processes and instances they hold (the target is none), against the server with none deployed."""

from __future__ import annotations

from pathlib import Path

import httpx

from bench.mcp_common import deploy_mcp
from bench.report import emit, progress
from bench.server import BenchServer

NAME = "mcp_idle_cost"
FUNCTIONS = 1000


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the server and its helpers)."""
    pids, total = [pid], 0.0
    while pids:
        current = pids.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")) / 1024
        pids.extend(int(child) for child in children)
    return total


def process_count(pid: int) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return len(children) + sum(process_count(int(c)) for c in children)


def main() -> None:
    with BenchServer() as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert server.proc is not None
        before_mb, before_procs = rss_mb(server.proc.pid), process_count(server.proc.pid)
        progress(f"{NAME}: deploying {FUNCTIONS} MCP functions")
        for i in range(FUNCTIONS):
            deploy_mcp(client, f"idle-{i}")
        listed = client.get("/v1/functions").json()["functions"]
        instances = sum(f["instances"] for f in listed)
        after_mb, after_procs = rss_mb(server.proc.pid), process_count(server.proc.pid)
    emit(NAME, "server_memory_mb", after_mb, "MB", before_mb)
    emit(NAME, "memory_per_function_mb", (after_mb - before_mb) / FUNCTIONS, "MB", None)
    emit(NAME, "processes_added", after_procs - before_procs, "count", None)
    emit(NAME, "instances", instances, "count", None)


if __name__ == "__main__":
    main()
