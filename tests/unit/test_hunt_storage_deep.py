"""A persist and a restore cost about what the manifest holds, however deep its files sit: each
directory of a deep tree is opened once per visit, not once per file below it (5000 files, each
in its own directory 400 levels down, took 37 times as long as the same files at the top)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcell.server.clock import FakeClock
from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.snapshots import Snapshots
from tests.unit.snapshot_helpers import dir_fd

FILES = 3000
DEPTH = 400


@pytest.fixture
def shm(tmp_path: Path) -> Iterator[Path]:
    path = Path("/dev/shm") / f"hunt-deep-{os.getpid()}-{tmp_path.name}"
    path.mkdir()
    yield path
    shutil.rmtree(path)


def make(root: Path, depth: int) -> None:
    """`FILES` directories of one small file each, below a chain of `depth` directories."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            fd, parent = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
            os.close(parent)
        for i in range(FILES):
            os.mkdir(f"s{i}", dir_fd=fd)
            file = os.open(f"s{i}/f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
            os.write(file, b"0123456789")
            os.close(file)
    finally:
        os.close(fd)


async def round_trip(base: Path, depth: int) -> float:
    make(base / f"ws{depth}", depth)
    (base / f"out{depth}").mkdir()
    snaps = Snapshots(LocalObjectStore(base / f"store{depth}"), FakeClock())
    started = time.perf_counter()
    with dir_fd(base / f"ws{depth}") as fd:
        assert (await snaps.persist("t/f/s", fd)).files == FILES
    with dir_fd(base / f"out{depth}") as fd:
        await snaps.restore("t/f/s", fd)
    return time.perf_counter() - started


async def test_a_deep_tree_costs_about_what_a_flat_one_does(shm: Path) -> None:
    flat = await round_trip(shm, 0)
    deep = await round_trip(shm, DEPTH)
    assert deep < 10 * flat + 0.5, (deep, flat)
