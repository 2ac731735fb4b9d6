"""Snapshot behaviour that needs root: ownership of restored entries (production: uid/gid 1000),
a restore into a size-limited workspace that cannot hold it, and one that can only because holes
and hard links are kept."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcell.errors import QuotaExceeded
from agentcell.server.clock import FakeClock
from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.snapshots import Snapshots
from tests.unit.snapshot_helpers import dir_fd, tree, write

pytestmark = pytest.mark.system

OWNER = (1000, 1000)


async def test_restore_chowns_files_dirs_and_links_to_owner(tmp_path: Path) -> None:
    """Files, directories and symlinks come back owned by `owner`, with modes and mtimes intact."""
    if os.geteuid() != 0:  # fail, not skip: CI must run this as root
        pytest.fail("needs root to chown")
    work, target = tmp_path / "work", tmp_path / "target"
    write(work, "src/main.py", b"print(1)\n")
    write(work, "bin/run", b"#!/bin/sh\n", 0o755)
    (work / "src/link").symlink_to("main.py")
    (work / "empty").mkdir()
    target.mkdir()
    snaps = Snapshots(LocalObjectStore(tmp_path / "store"), FakeClock())
    with dir_fd(work) as fd:
        await snaps.persist("t/f/s", fd, owner=OWNER)
    with dir_fd(target, os.O_PATH) as fd:
        await snaps.restore("t/f/s", fd, owner=OWNER)
    owners = {
        str(path.relative_to(target)): (path.lstat().st_uid, path.lstat().st_gid)
        for path in target.rglob("*")
    }
    assert set(owners) == {"src", "src/main.py", "src/link", "bin", "bin/run", "empty"}
    assert set(owners.values()) == {OWNER}
    assert tree(target) == tree(work)
    assert target.stat().st_uid == 0, "the workspace root itself belongs to whoever made it"


@pytest.fixture
def small_workspace(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, as a size-limited workspace; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a tmpfs")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    with tmpfs(mountpoint):
        yield mountpoint


@contextlib.contextmanager
def tmpfs(mountpoint: Path) -> Iterator[None]:
    """A 1 MiB tmpfs on `mountpoint` for the duration."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


async def test_restore_that_does_not_fit_is_quota_exceeded_and_leaves_nothing(
    tmp_path: Path, small_workspace: Path
) -> None:
    """ENOSPC while restoring becomes QuotaExceeded, and the workspace is left empty, not half full."""
    work = tmp_path / "work"
    for i in range(6):
        write(work, f"f{i}.bin", os.urandom(300_000))
    snaps = Snapshots(LocalObjectStore(tmp_path / "store"), FakeClock())
    with dir_fd(work) as fd:
        await snaps.persist("t/f/s", fd)
    with dir_fd(small_workspace) as fd, pytest.raises(QuotaExceeded, match="out of space") as failed:
        await snaps.restore("t/f/s", fd)
    assert os.listdir(small_workspace) == []
    assert "the snapshot's files need about 1.7 MiB; its file system holds 1.0 MiB" in str(failed.value)


async def test_sparse_files_and_hard_links_fit_where_they_came_from(
    tmp_path: Path, small_workspace: Path
) -> None:
    """A workspace whose files fit its disk fits it again after a restore: a 100 MiB sparse file
    and two names of one 600 KB file in a 1 MiB tmpfs (written densely, or as two copies, they
    would not)."""
    write(small_workspace, "keep.txt", b"important\n")
    with (small_workspace / "big.sparse").open("wb") as file:
        file.truncate(100 << 20)
    write(small_workspace, "data.bin", os.urandom(600_000))
    os.link(small_workspace / "data.bin", small_workspace / "data.link")
    snaps = Snapshots(LocalObjectStore(tmp_path / "store"), FakeClock())
    with dir_fd(small_workspace) as fd:
        await snaps.persist("t/f/s", fd)
    before = tree(small_workspace)
    for name in os.listdir(small_workspace):
        os.unlink(small_workspace / name)
    with dir_fd(small_workspace) as fd:
        await snaps.restore("t/f/s", fd)
    assert tree(small_workspace) == before
    assert (small_workspace / "big.sparse").stat().st_size == 100 << 20
    assert (small_workspace / "big.sparse").stat().st_blocks == 0
    assert (small_workspace / "data.link").stat().st_ino == (small_workspace / "data.bin").stat().st_ino


async def test_persist_does_not_cross_into_other_mounts(tmp_path: Path) -> None:
    """A file system mounted inside the workspace is skipped (counted), not copied."""
    if os.geteuid() != 0:
        pytest.fail("needs root to mount a tmpfs")
    work = tmp_path / "work"
    write(work, "mine.txt", b"mine")
    (work / "mnt").mkdir()
    with tmpfs(work / "mnt"):
        write(work, "mnt/host-data.txt", b"not the workspace's")
        snaps = Snapshots(LocalObjectStore(tmp_path / "store"), FakeClock())
        with dir_fd(work) as fd:
            info = await snaps.persist("t/f/s", fd)
    assert info.files == 1 and info.skipped == 1
