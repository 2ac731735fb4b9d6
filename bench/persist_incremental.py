"""persist_incremental: the second persist of a workspace after one file changed, against the first
(full) persist of the same workspace in the same run, on the local object store. Cases: the 10 MB /
100-file workspace and the Node project (node_modules excluded)."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from agentcell.server.clock import SystemClock
from agentcell.server.storage.objects import open_object_store
from agentcell.server.storage.snapshots import Snapshots
from bench.report import emit, median, progress
from bench.workspaces import EXCLUDES, drop_page_cache_hint, make_node_project, make_ten_mb

NAME = "persist_incremental"
RUNS = 9


async def timed_persist(snaps: Snapshots, prefix: str, src: Path) -> tuple[float, int]:
    drop_page_cache_hint()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        started = time.perf_counter()
        info = await snaps.persist(prefix, fd, EXCLUDES)
        return (time.perf_counter() - started) * 1000, info.uploaded_bytes
    finally:
        os.close(fd)


def read(path: Path) -> bytes:
    return path.read_bytes()


def rewrite(path: Path, data: bytes) -> None:
    """The one-file change: new content, a fresh mtime."""
    path.write_bytes(data)


async def measure(snaps: Snapshots, src: Path, changed: Path, case: str) -> None:
    fulls, incrementals, full_bytes, inc_bytes = [], [], 0, 0
    original = read(changed)
    for run in range(RUNS):
        prefix = f"bench/{case}/{run}"
        rewrite(changed, original)
        full_ms, full_bytes = await timed_persist(snaps, prefix, src)
        rewrite(changed, original[: len(original) // 2] + f"edit {run}\n".encode())
        inc_ms, inc_bytes = await timed_persist(snaps, prefix, src)
        fulls.append(full_ms)
        incrementals.append(inc_ms)
        await snaps.delete_all(prefix)
    rewrite(changed, original)
    emit(NAME, f"incremental_{case}_ms", median(incrementals), "ms", median(fulls))
    emit(NAME, f"incremental_{case}_uploaded_MB", inc_bytes / 1e6, "MB", full_bytes / 1e6)


async def run_all(tmp: Path) -> None:
    ten, node = tmp / "ten", tmp / "node"
    make_ten_mb(ten)
    make_node_project(node)
    snaps = Snapshots(open_object_store(str(tmp / "store")), SystemClock())
    progress(f"{NAME}: 10mb x{RUNS}")
    await measure(snaps, ten, ten / "dir3" / "file003.py", "10mb")
    progress(f"{NAME}: node x{RUNS}")
    await measure(snaps, node, node / "src" / "mod07.js", "node")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="agentcell-bench-") as tmp:
        asyncio.run(run_all(Path(tmp)))


if __name__ == "__main__":
    main()
