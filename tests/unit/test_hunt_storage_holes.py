"""Files of every shape of data and holes round-trip byte for byte, holes staying holes, and a
persist reads about what the file holds: pieces end at large holes, small holes are read."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcell.server.clock import FakeClock
from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.manifest import HOLE
from agentcell.server.storage.persist import MIN_HOLE_BYTES
from agentcell.server.storage.pieces import CHUNK_BYTES
from agentcell.server.storage.snapshots import Snapshots
from tests.unit.snapshot_helpers import dir_fd, read_manifest

KiB, MiB = 1 << 10, 1 << 20
SHM = Path("/dev/shm")  # tmpfs: holes at page granularity, as in a sandbox

SHAPES: dict[str, tuple[int, list[tuple[int, int]]]] = {
    # name: (size, [(offset, length) of data])
    "dense": (9 * MiB + 5, [(0, 9 * MiB + 5)]),
    "a byte every 4 MiB": (64 * MiB, [(i * 4 * MiB, 1) for i in range(16)]),
    "small holes inside data": (6 * MiB, [(i * 16 * KiB, 8 * KiB) for i in range(384)]),
    "hole first, data last": (8 * MiB + 3, [(8 * MiB - 4 * KiB, 4 * KiB + 3)]),
    "data then a small trailing hole": (2 * MiB + 12 * KiB, [(0, 2 * MiB)]),
    "unaligned data": (5 * MiB, [(100_001, 3), (2 * MiB + 7, 70_000), (4 * MiB + 4095, 2)]),
}


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    if not SHM.is_dir():
        raise AssertionError("these tests need /dev/shm (a tmpfs)")
    path = SHM / f"hunt-holes-{os.getpid()}-{tmp_path.name}"
    (path / "ws").mkdir(parents=True)
    (path / "out").mkdir()
    yield path
    shutil.rmtree(path)


def make(path: Path, size: int, runs: list[tuple[int, int]]) -> str:
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.ftruncate(fd, size)
        for offset, length in runs:
            os.pwrite(
                fd, (hashlib.sha256(str(offset).encode()).digest() * (length // 32 + 1))[:length], offset
            )
    finally:
        os.close(fd)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("shape", sorted(SHAPES))
async def test_every_shape_round_trips_and_reads_about_its_data(work: Path, shape: str) -> None:
    size, runs = SHAPES[shape]
    expected = make(work / "ws" / "f", size, runs)
    store = LocalObjectStore(work / "store")
    snaps = Snapshots(store, FakeClock())
    with dir_fd(work / "ws") as fd:
        await snaps.persist("t/f/s", fd)
    with dir_fd(work / "out") as fd:
        await snaps.restore("t/f/s", fd)
    out = work / "out" / "f"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == expected
    assert out.stat().st_size == size
    assert out.stat().st_blocks <= (work / "ws" / "f").stat().st_blocks  # holes stayed holes
    pieces = read_manifest(store, "t/f/s/snapshots/000000000001")["entries"][0][7]
    data_read = sum(p[3] for p in pieces if p[0] != HOLE)
    data = sum(length for _, length in runs)
    # what is read: the data, the small holes inside it, and at worst a block around each run
    assert data_read <= data + len(runs) * (MIN_HOLE_BYTES + 8 * KiB), (data_read, data)
    assert all(p[3] <= CHUNK_BYTES for p in pieces if p[0] != HOLE)
