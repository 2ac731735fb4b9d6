"""Run every benchmark, or the one named: `python -m bench [name]`."""

from __future__ import annotations

import importlib
import sys

ALL = [
    "cold_start",
    "exec_rtt",
    "idle_memory",
    "create_throughput",
    "gateway_overhead",
    "session_create",
    "scale_from_zero",
    "affinity_load",
    "resume_first_request",
    "mcp_rtt",
    "mcp_cold",
    "mcp_idle_cost",
    "pip_cache",
    "template_start",
    "persist_restore",
    "persist_incremental",
    "code_rtt",
    "code_first",
    "observability_overhead",
    "e2b_overhead",
    "pty_rtt",
    "sandbox_pause",
    "cli_start",
    "file_watch",
]


def main(argv: list[str]) -> int:
    names = argv or ALL
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {ALL}", file=sys.stderr)
        return 2
    for name in names:
        importlib.import_module(f"bench.{name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
