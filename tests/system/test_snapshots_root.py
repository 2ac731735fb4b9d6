"""Snapshot behaviour that needs root: ownership of restored entries (production: uid/gid 1000)
and a restore into a size-limited workspace that cannot hold it."""

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
    with dir_fd(small_workspace) as fd, pytest.raises(QuotaExceeded, match="out of space"):
        await snaps.restore("t/f/s", fd)
    assert os.listdir(small_workspace) == []


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
