"""Holes and hard links through a persist and a restore: a sparse file comes back sparse, files
that were one inode come back as one inode, a 1 TiB sparse file costs what its data costs, and
manifests written before links or holes were kept still restore (each file on its own, holes
kept)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from agentcell.errors import Conflict
from agentcell.server.clock import FakeClock
from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.manifest import MAX_FILE_BYTES
from agentcell.server.storage.pieces import CHUNK_BYTES, SMALL_FILE_BYTES, ZERO_CHUNK_HASH, blob_key, encode
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


async def test_holes_and_written_zeros_are_stored_as_holes(
    snaps: Snapshots, store: LocalObjectStore, work: Path, target: Path
) -> None:
    """Chunks that are all hole (not read by the persist) and chunks of zeros written out (read)
    are one hole piece each, stored nowhere, and the two files have one content hash."""
    skip_without_holes(work)
    write(work, "written.zeros", bytes(2 * CHUNK_BYTES))
    sparse(work, "sparse.zeros", 2 * CHUNK_BYTES, {})
    await persist(snaps, work)
    assert [name for name in object_files(store, PREFIX) if name.startswith("blobs/")] == []
    entries = {entry[0]: entry for entry in read_manifest(store, MANIFEST)["entries"]}
    hole = ["hole", 0, 0, 2 * CHUNK_BYTES, 0, ""]
    assert entries["written.zeros"][7] == entries["sparse.zeros"][7] == [hole]
    assert entries["written.zeros"][5] == entries["sparse.zeros"][5]
    await restore(snaps, target)
    assert tree(target) == tree(work)
    assert allocated(target / "written.zeros") == 0


async def test_a_1_tib_sparse_file_persists_and_restores_in_seconds(
    snaps: Snapshots, store: LocalObjectStore, work: Path, target: Path
) -> None:
    """`truncate -s 1T` in a sandbox costs a pause what its data costs: its holes are neither read
    nor hashed, and the manifest holds a few pieces, not 262,144 (this persist took ~10 minutes)."""
    skip_without_holes(work)
    size = 1 << 40
    data = {0: b"head", size // 2 + 7: b"middle", size - 4: b"tail"}
    huge = sparse(work, "huge.sparse", size, data)
    write(work, "notes.txt", b"small data\n")
    started = time.monotonic()
    info = await persist(snaps, work)
    assert time.monotonic() - started < 20
    assert info.logical_bytes == size + len(b"small data\n")
    pieces = next(
        entry[7] for entry in read_manifest(store, MANIFEST)["entries"] if entry[0] == "huge.sparse"
    )
    assert len(pieces) <= 5
    assert (await persist(snaps, work)).seq == 1  # nothing changed: no new snapshot
    started = time.monotonic()
    await restore(snaps, target)
    assert time.monotonic() - started < 20
    restored = target / "huge.sparse"
    assert restored.stat().st_size == huge.stat().st_size
    assert allocated(restored) <= max(allocated(huge), 64 << 10) + CHUNK_BYTES
    with restored.open("rb") as file:
        for offset, expected in data.items():
            file.seek(offset)
            assert file.read(len(expected)) == expected
    assert (target / "notes.txt").read_bytes() == b"small data\n"


async def test_a_file_larger_than_a_snapshot_keeps_stops_the_persist_at_once(
    snaps: Snapshots, store: LocalObjectStore, work: Path
) -> None:
    """A file past MAX_FILE_BYTES (its restore would be refused) fails the persist before anything
    is read or uploaded, naming the file and what to do; the last snapshot stays the latest."""
    write(work, "notes.txt", b"kept\n")
    await persist(snaps, work)
    before = object_files(store, PREFIX)
    sparse(work, "deep/huge", MAX_FILE_BYTES + 1, {})
    started = time.monotonic()
    with pytest.raises(
        Conflict, match=r"file 'deep/huge' is 1099511627777 bytes long.*delete it or shrink it"
    ):
        await persist(snaps, work)
    assert time.monotonic() - started < 20
    assert object_files(store, PREFIX) == before


async def test_a_snapshot_with_chunks_of_zeros_restores_and_its_next_persist_uses_holes(
    snaps: Snapshots, store: LocalObjectStore, work: Path, target: Path
) -> None:
    """A manifest as written before holes were kept (each hole a reference to a stored chunk of
    zeros, a file's hash the sha256 of its bytes) restores sparse; the next persist writes the
    unchanged file with holes and today's hash, so a new hard link to it is seen as one."""
    skip_without_holes(work)
    big = sparse(
        work, "big", 3 * CHUNK_BYTES + 10, {0: os.urandom(CHUNK_BYTES), 3 * CHUNK_BYTES: b"0123456789"}
    )
    await persist(snaps, work)
    body = read_manifest(store, MANIFEST)
    _with_zero_chunks(store, body, "big", hashlib.sha256(big.read_bytes()).hexdigest())
    write_manifest(store, MANIFEST, body)
    await restore(snaps, target)
    assert tree(target) == tree(work)
    assert allocated(target / "big") <= allocated(big) + (64 << 10)
    os.link(big, work / "big.link")
    info = await persist(snaps, work)
    assert info.seq == 2 and info.uploaded_bytes < 64 << 10
    body = read_manifest(store, f"{PREFIX}/snapshots/000000000002")
    assert body["links"] == [["big.link", "big"]]
    assert not any(key.startswith("blobs/" + ZERO_CHUNK_HASH) for key in body["objects"])


def _with_zero_chunks(store: LocalObjectStore, body: dict[str, Any], path: str, sha256: str) -> None:
    """Rewrite `path`'s entry as manifests stored holes before HOLE pieces: zero-chunk blobs."""
    assert hashlib.sha256(bytes(CHUNK_BYTES)).hexdigest() == ZERO_CHUNK_HASH
    codec, stored = encode(bytes(CHUNK_BYTES), True)
    key = blob_key(ZERO_CHUNK_HASH, codec)
    (store.root / PREFIX / key).write_bytes(stored)
    body["objects"][key] = len(stored)
    entry = next(entry for entry in body["entries"] if entry[0] == path)
    pieces: list[list[Any]] = []
    for piece in entry[7]:
        if piece[0] != "hole":
            pieces.append(piece)
            continue
        assert piece[3] % CHUNK_BYTES == 0
        pieces += [[key, 0, len(stored), CHUNK_BYTES, codec, ZERO_CHUNK_HASH]] * (piece[3] // CHUNK_BYTES)
    entry[5], entry[7] = sha256, pieces
