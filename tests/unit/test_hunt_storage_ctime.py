"""Change detection that a sandbox cannot fool: a same-size rewrite with the old mtime put back
is read again (the inode change time moved); files a restore wrote are not read again by the
next persist (their change times are the restore's), and one changed after it is."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from agentcell.server.clock import FakeClock
from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.snapshots import SnapshotInfo, Snapshots
from tests.unit.snapshot_helpers import OLD_NS, dir_fd, write

PREFIX = "t/f/s"


@pytest.fixture
def snaps(tmp_path: Path) -> Snapshots:
    return Snapshots(LocalObjectStore(tmp_path / "store"), FakeClock())


async def persist(snaps: Snapshots, root: Path) -> SnapshotInfo:
    with dir_fd(root) as fd:
        return await snaps.persist(PREFIX, fd)


async def restore(snaps: Snapshots, root: Path) -> None:
    await asyncio.to_thread(root.mkdir)
    with dir_fd(root) as fd:
        assert await snaps.restore(PREFIX, fd) is not None


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """What `cp -p` over the file does: new bytes, same size and mode, the old mtime put back."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


async def test_a_rewrite_with_the_mtime_put_back_is_saved(snaps: Snapshots, tmp_path: Path) -> None:
    work = tmp_path / "work"
    write(work, "db.bin", os.urandom(300_000))  # past INLINE_BYTES: a pack, reused when unchanged
    write(work, "big.bin", os.urandom(3 << 20))  # chunk blobs
    write(work, "other.bin", os.urandom(300_000))
    await persist(snaps, work)
    new_db, new_big = os.urandom(300_000), os.urandom(3 << 20)
    rewrite_keeping_mtime(work / "db.bin", new_db)
    rewrite_keeping_mtime(work / "big.bin", new_big)
    info = await persist(snaps, work)
    assert info.seq == 2 and info.hashed_files == 2  # other.bin: unchanged, not read
    await restore(snaps, tmp_path / "out")
    assert (tmp_path / "out" / "db.bin").read_bytes() == new_db
    assert (tmp_path / "out" / "big.bin").read_bytes() == new_big


async def test_after_a_restore_only_files_changed_since_are_read(snaps: Snapshots, tmp_path: Path) -> None:
    work = tmp_path / "work"
    for i in range(20):
        write(work, f"src/f{i:02d}.bin", os.urandom(100_000))
    await persist(snaps, work)
    shutil.rmtree(work)
    await restore(snaps, work)  # as a session on a new instance
    assert (work / "src/f03.bin").stat().st_mtime_ns == OLD_NS
    rewrite_keeping_mtime(work / "src/f03.bin", changed := os.urandom(100_000))
    info = await persist(snaps, work)
    assert info.seq == 2 and info.hashed_files == 1
    again = await persist(snaps, work)  # the change times it recorded are trusted from now on
    assert again.seq == 2  # nothing changed: no new snapshot (its change times are the same)
    await restore(snaps, tmp_path / "out")
    assert (tmp_path / "out" / "src/f03.bin").read_bytes() == changed
