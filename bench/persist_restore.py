"""persist_restore: a full snapshot and a restore of (a) a 10 MB / 100-file workspace and (b) a Node
project whose 20 000-file node_modules is excluded, on the local object store (and on SeaweedFS S3
when `weed` is installed), against `tar -czf` / `tar -xzf` of the same tree with the same excludes.

Variants of the 10 MB case show the layout choices: small files packed (default) or one blob per
file, zlib level 1 where a probe says it pays (default) or never."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from agentcell.server.clock import SystemClock
from agentcell.server.storage.objects import ObjectStore, open_object_store
from agentcell.server.storage.snapshots import Snapshots
from bench.report import emit, median, progress
from bench.workspaces import (
    EXCLUDES,
    drop_page_cache_hint,
    fresh_dir,
    make_node_project,
    make_ten_mb,
    tar_create_ms,
    tar_extract_ms,
)

NAME = "persist_restore"
RUNS = 9


@contextlib.contextmanager
def open_dir(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


async def measure(
    snaps: Snapshots, src: Path, dest: Path, excludes: Sequence[str], tag: str
) -> tuple[list[float], list[float], int]:
    """Full persists (a fresh prefix each run) and restores into an empty directory."""
    persists, restores, stored = [], [], 0
    for run in range(RUNS):
        prefix = f"bench/{tag}/{run}"
        drop_page_cache_hint()
        with open_dir(src) as fd:
            started = time.perf_counter()
            info = await snaps.persist(prefix, fd, excludes)
            persists.append((time.perf_counter() - started) * 1000)
        stored = info.stored_bytes
        fresh_dir(dest)
        drop_page_cache_hint()
        with open_dir(dest) as fd:
            started = time.perf_counter()
            await snaps.restore(prefix, fd)
            restores.append((time.perf_counter() - started) * 1000)
        await snaps.delete_all(prefix)
    return persists, restores, stored


def tar_baseline(src: Path, dest: Path, archive: Path, excludes: Sequence[str]) -> tuple[float, float, int]:
    creates, extracts = [], []
    for _ in range(RUNS):
        drop_page_cache_hint()
        creates.append(tar_create_ms(src, archive, excludes))
        drop_page_cache_hint()
        extracts.append(tar_extract_ms(archive, dest))
    return median(creates), median(extracts), archive.stat().st_size


async def run_case(
    store: ObjectStore,
    tmp: Path,
    src: Path,
    excludes: Sequence[str],
    case: str,
    variants: dict[str, Snapshots],
) -> None:
    tar_c, tar_x, tar_bytes = tar_baseline(src, tmp / "tar-out", tmp / f"{case}.tgz", excludes)
    for variant, snaps in variants.items():
        progress(f"{NAME}: {case} {variant} x{RUNS}")
        persists, restores, stored = await measure(
            snaps, src, tmp / "restored", excludes, f"{case}-{variant}"
        )
        suffix = "" if variant == "default" else f"_{variant}"
        emit(NAME, f"persist_{case}{suffix}_ms", median(persists), "ms", tar_c)
        emit(NAME, f"restore_{case}{suffix}_ms", median(restores), "ms", tar_x)
        emit(NAME, f"stored_{case}{suffix}_MB", stored / 1e6, "MB", tar_bytes / 1e6)


def variants(store: ObjectStore, full: bool) -> dict[str, Snapshots]:
    clock = SystemClock()
    chosen = {"default": Snapshots(store, clock)}
    if full:
        chosen["raw"] = Snapshots(store, clock, compress=False)
        chosen["per_file_blobs"] = Snapshots(store, clock, small_file_bytes=0)
    return chosen


async def run_all(tmp: Path) -> None:
    ten, node = tmp / "ten", tmp / "node"
    make_ten_mb(ten)
    make_node_project(node)
    local = open_object_store(str(tmp / "store"))
    await run_case(local, tmp, ten, EXCLUDES, "10mb", variants(local, full=True))
    await run_case(local, tmp, node, EXCLUDES, "node", variants(local, full=False))
    if shutil.which("weed"):
        from tests.s3server import running_s3

        with running_s3() as server:
            s3 = open_object_store(f"s3://{server.bucket}/bench", s3_endpoint=server.endpoint)
            try:
                await run_case(s3, tmp, ten, EXCLUDES, "10mb_s3", variants(s3, full=False))
            finally:
                await s3.aclose()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="agentcell-bench-") as tmp:
        asyncio.run(run_all(Path(tmp)))


if __name__ == "__main__":
    main()
