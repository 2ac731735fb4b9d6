"""Holes and hard links through a persist and a restore: a sparse file comes back sparse, files
that were one inode come back as one inode, and manifests written before links were kept still
restore (each file on its own, holes kept)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agentcell.server.clock import FakeClock
from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.pieces import CHUNK_BYTES, SMALL_FILE_BYTES
from agentcell.server.storage.snapshots import SnapshotInfo, Snapshots
from tests.unit.snapshot_helpers import (
    OLD_NS,
    age,
    dir_fd,
    object_files,
    read_manifest,
    tree,
    write,
    write_manifest,
)

PREFIX = "tenant/fn/ses_1"
MANIFEST = f"{PREFIX}/snapshots/000000000001"
MiB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "store")


@pytest.fixture
def snaps(store: LocalObjectStore) -> Snapshots:
    return Snapshots(store, FakeClock(), keep=3)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    path.mkdir()
    return path


async def persist(snaps: Snapshots, root: Path, exclude: tuple[str, ...] = ()) -> SnapshotInfo:
    with dir_fd(root) as fd:
        return await snaps.persist(PREFIX, fd, exclude)


async def restore(snaps: Snapshots, root: Path) -> None:
    with dir_fd(root, os.O_PATH) as fd:
        await snaps.restore(PREFIX, fd)


def sparse(root: Path, rel: str, size: int, data: dict[int, bytes]) -> Path:
    """A file of `size` bytes that is a hole except for `data` (offset → bytes)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        file.truncate(size)
        for offset, chunk in data.items():
            file.seek(offset)
            file.write(chunk)
    os.utime(path, ns=(OLD_NS, OLD_NS))
    return path


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def skip_without_holes(root: Path) -> None:
    probe = sparse(root, ".probe", 8 * MiB, {})
    has_holes = allocated(probe) == 0
    probe.unlink()
    if not has_holes:
        pytest.skip("the file system of the tmp dir does not keep holes")


async def test_sparse_files_come_back_sparse(snaps: Snapshots, work: Path, target: Path) -> None:
    """A 10 MiB file of a few data blocks (chunked), a mostly empty small file (packed), a file
    that is all hole and one whose tail is a hole restore with their size, bytes and few blocks."""
    skip_without_holes(work)
    files = {
        "big.sparse": sparse(work, "big.sparse", 10 * MiB, {0: b"head", 5 * MiB + 3: b"middle"}),
        "small.sparse": sparse(work, "small.sparse", SMALL_FILE_BYTES // 2, {100_000: b"x"}),
        "all.hole": sparse(work, "all.hole", 3 * CHUNK_BYTES + 5, {}),
        "tail.hole": sparse(work, "tail.hole", 2 * CHUNK_BYTES, {1: b"data"}),
    }
    info = await persist(snaps, work)
    assert info.logical_bytes == sum(path.stat().st_size for path in files.values())
    await restore(snaps, target)
    assert tree(target) == tree(work)
    for name, original in files.items():
        restored = target / name
        assert restored.stat().st_size == original.stat().st_size, name
        assert allocated(restored) <= max(allocated(original), 64 << 10), name
    assert allocated(target / "all.hole") == 0


async def test_zero_blocks_inside_data_become_holes(snaps: Snapshots, work: Path, target: Path) -> None:
    """Zeros written out as data still read back as zeros, from fewer blocks: a restore may only
    make a file smaller on disk, never different."""
    skip_without_holes(work)
    data = os.urandom(5000) + bytes(3 * MiB) + os.urandom(7000) + bytes(9000)
    write(work, "dense-zeros.bin", data)
    await persist(snaps, work)
    await restore(snaps, target)
    restored = target / "dense-zeros.bin"
    assert restored.read_bytes() == data
    assert allocated(restored) < 64 << 10


async def test_hard_links_come_back_as_one_inode(snaps: Snapshots, work: Path, target: Path) -> None:
    """Names of one inode (small and chunked files, across directories) are one inode again after
    a restore, stored once; a file linked to one outside the walk (excluded) is a plain file."""
    small = write(work, "a.txt", b"shared small\n")
    (work / "sub").mkdir()
    os.link(small, work / "sub/b.txt")
    os.link(small, work / "sub/c.txt")
    large = write(work, "large.bin", os.urandom(SMALL_FILE_BYTES + CHUNK_BYTES))
    os.link(large, work / "large.link")
    os.link(write(work, "cache/blob", b"cached"), work / "venv.txt")
    age(work)
    info = await persist(snaps, work, exclude=("cache",))
    assert info.uploaded_bytes < SMALL_FILE_BYTES + CHUNK_BYTES + (64 << 10)  # the big one once
    await restore(snaps, target)
    assert tree(target) == _without(tree(work), "cache")
    inode = (target / "a.txt").stat().st_ino
    assert {(target / p).stat().st_ino for p in ("sub/b.txt", "sub/c.txt")} == {inode}
    assert (target / "a.txt").stat().st_nlink == 3
    assert (target / "large.link").stat().st_ino == (target / "large.bin").stat().st_ino
    assert (target / "venv.txt").stat().st_nlink == 1
    assert (target / "venv.txt").read_bytes() == b"cached"


def _without(found: dict[str, tuple[object, ...]], top: str) -> dict[str, tuple[object, ...]]:
    return {path: value for path, value in found.items() if path != top and not path.startswith(top + "/")}


async def test_a_broken_link_is_a_change_and_restores_as_two_files(
    snaps: Snapshots, work: Path, target: Path
) -> None:
    """Replacing a link by a copy of the same bytes and mtime is seen (a new snapshot), and the
    two names then restore as two inodes; an untouched linked tree is no change at all."""
    first = write(work, "one", b"same bytes")
    os.link(first, work / "two")
    age(work)
    assert (await persist(snaps, work)).seq == 1
    assert (await persist(snaps, work)).seq == 1  # nothing changed
    (work / "two").unlink()
    shutil.copy2(first, work / "two")
    assert (await persist(snaps, work)).seq == 2
    await restore(snaps, target)
    assert (target / "one").stat().st_ino != (target / "two").stat().st_ino
    assert (target / "two").read_bytes() == b"same bytes"


async def test_a_manifest_without_links_restores_each_file_and_keeps_holes(
    snaps: Snapshots, store: LocalObjectStore, work: Path, target: Path
) -> None:
    """A manifest as written before links and holes were kept (no "links") still restores: hard
    links as separate files with their bytes, sparse files sparse."""
    skip_without_holes(work)
    linked = write(work, "a", b"a's bytes")
    os.link(linked, work / "b")
    sparse(work, "s", 9 * MiB, {8 * MiB: b"end"})
    age(work)
    await persist(snaps, work)
    body = read_manifest(store, MANIFEST)
    assert body.pop("links") == [["b", "a"]]
    write_manifest(store, MANIFEST, body)
    await restore(snaps, target)
    assert tree(target) == tree(work)
    assert (target / "a").stat().st_ino != (target / "b").stat().st_ino
    assert (target / "s").stat().st_size == 9 * MiB and allocated(target / "s") < 64 << 10


async def test_incremental_persists_of_links_and_holes_upload_nothing_again(
    snaps: Snapshots, work: Path, target: Path
) -> None:
    """A new link to stored content, or a sparse file grown by a hole, uploads almost nothing."""
    big = sparse(work, "big", 4 * CHUNK_BYTES, {0: os.urandom(CHUNK_BYTES)})
    await persist(snaps, work)
    os.link(big, work / "big.link")
    sparse(work, "bigger", 8 * CHUNK_BYTES, {0: big.read_bytes()[:CHUNK_BYTES]})
    age(work)
    info = await persist(snaps, work)
    assert info.seq == 2 and info.uploaded_bytes < 64 << 10
    await restore(snaps, target)
    assert (target / "big.link").stat().st_ino == (target / "big").stat().st_ino
    assert (target / "bigger").read_bytes() == (work / "bigger").read_bytes()


async def test_a_hole_is_stored_as_the_chunk_of_written_zeros(
    snaps: Snapshots, store: LocalObjectStore, work: Path, target: Path
) -> None:
    """A chunk that is all hole (not read by the persist) and a chunk of zeros written out (read)
    are the same blob, so holes dedupe with what earlier persists stored for them."""
    skip_without_holes(work)
    write(work, "written.zeros", bytes(2 * CHUNK_BYTES))
    sparse(work, "sparse.zeros", 2 * CHUNK_BYTES, {})
    await persist(snaps, work)
    assert len([name for name in object_files(store, PREFIX) if name.startswith("blobs/")]) == 1
    await restore(snaps, target)
    assert tree(target) == tree(work)
