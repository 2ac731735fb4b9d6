"""RootedFiles of several sandboxes share one worker pool: no sandbox may take all of it.

Runs as the server identity (no fsuid switch), so it needs no root; the pool is the real shared
one, as in production.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agentcell.server.sandbox.linux.files import POOL_WORKERS, SANDBOX_POOL_SLOTS, RootedFiles

FLOODING_CALLS = 4 * POOL_WORKERS


def make_root(path: Path, dirs: int, files_per_dir: int) -> Path:
    for d in range(dirs):
        sub = path / "home" / "user" / "tree" / f"d{d:03}"
        sub.mkdir(parents=True)
        for f in range(files_per_dir):
            (sub / f"f{f:03}").touch()
    (path / "home" / "user").mkdir(parents=True, exist_ok=True)
    return path


async def test_a_flooding_sandbox_leaves_threads_for_the_others(tmp_path: Path) -> None:
    """While sandbox A has many times the pool's size in deep listings under way, sandbox B's stat
    gets a thread at once: it answers before A's listings have got through even one round of the
    pool (without a per-sandbox bound it queues behind all of them)."""
    assert SANDBOX_POOL_SLOTS < POOL_WORKERS
    a = RootedFiles(str(make_root(tmp_path / "a", dirs=40, files_per_dir=40)), None, None)
    b = RootedFiles(str(make_root(tmp_path / "b", dirs=0, files_per_dir=0)), None, None)
    finished = 0

    async def flood() -> None:
        nonlocal finished
        await a.list("/home/user/tree", depth=2)
        finished += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(FLOODING_CALLS):
            group.create_task(flood())
        await asyncio.sleep(0)  # every listing has asked for a thread
        assert (await b.stat("/home/user")).type == "dir"
        finished_before_b = finished
    assert finished == FLOODING_CALLS
    assert finished_before_b < POOL_WORKERS, f"B waited for {finished_before_b} of A's listings"
