"""Snapshots against bad data and hostile trees: corrupt or missing objects, tampered manifests,
links swapped in mid-walk, and a persist SIGKILLed half-way."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agentcell.errors import Internal
from agentcell.server.clock import FakeClock
from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.manifest import SnapshotCorrupt
from agentcell.server.storage.snapshots import Snapshots
from agentcell.server.storage.tree import Excludes, Reader, scan
from tests.unit.snapshot_helpers import age, dir_fd, object_files, read_manifest, tree, write, write_manifest

PREFIX = "t/f/s"
MANIFEST = f"{PREFIX}/snapshots/000000000001"
REPO = Path(__file__).resolve().parents[2]
SIZE_OF_B = 2 << 20


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "store")


@pytest.fixture
def snaps(store: LocalObjectStore) -> Snapshots:
    return Snapshots(store, FakeClock())


@pytest.fixture
def box(tmp_path: Path) -> Path:
    """A parent holding the target and an `outside` sibling that must never be written."""
    (tmp_path / "box/target").mkdir(parents=True)
    (tmp_path / "box/outside").mkdir()
    return tmp_path / "box"


async def persist_sample(snaps: Snapshots, root: Path) -> None:
    write(root, "dir/a.txt", b"alpha" * 100)
    write(root, "dir/b.bin", os.urandom(SIZE_OF_B))  # chunk blobs
    write(root, "c.txt", b"gamma")
    write(root, "dir/pad.bin", os.urandom(100_000))  # small files past INLINE_BYTES: a pack
    age(root)
    with dir_fd(root) as fd:
        await snaps.persist(PREFIX, fd)


async def restore_into(snaps: Snapshots, box: Path) -> None:
    with dir_fd(box / "target") as fd:
        await snaps.restore(PREFIX, fd)


def assert_untouched(box: Path) -> None:
    assert list((box / "target").iterdir()) == [], "a failed restore left files behind"
    assert list((box / "outside").iterdir()) == [], "a restore wrote outside its target"


async def test_corrupt_pack_byte_is_detected(
    snaps: Snapshots, store: LocalObjectStore, tmp_path: Path, box: Path
) -> None:
    """One flipped byte in a pack fails the restore with the object's name, and leaves nothing."""
    await persist_sample(snaps, tmp_path / "work")
    pack = next(p for p in (store.root / PREFIX / "packs").iterdir())
    data = bytearray(pack.read_bytes())
    data[3] ^= 0x01
    pack.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorrupt, match=pack.name):
        await restore_into(snaps, box)
    assert_untouched(box)


async def test_corrupt_chunk_blob_is_detected(
    snaps: Snapshots, store: LocalObjectStore, tmp_path: Path, box: Path
) -> None:
    """A chunk blob replaced by other bytes of the same length fails its hash check."""
    await persist_sample(snaps, tmp_path / "work")
    blob = next(p for p in (store.root / PREFIX / "blobs").iterdir())
    blob.write_bytes(os.urandom(blob.stat().st_size))
    with pytest.raises(SnapshotCorrupt, match=blob.name):
        await restore_into(snaps, box)
    assert_untouched(box)


@pytest.mark.parametrize("area", ["packs", "blobs"])
async def test_missing_object_is_corrupt(
    snaps: Snapshots, store: LocalObjectStore, tmp_path: Path, box: Path, area: str
) -> None:
    """A referenced object that is gone makes the snapshot corrupt, never an emptier workspace."""
    await persist_sample(snaps, tmp_path / "work")
    for path in (store.root / PREFIX / area).iterdir():
        path.unlink()
    with pytest.raises(SnapshotCorrupt, match="missing"):
        await restore_into(snaps, box)
    assert_untouched(box)


async def test_garbage_manifest_is_corrupt(
    snaps: Snapshots, store: LocalObjectStore, tmp_path: Path, box: Path
) -> None:
    """A manifest that is not a manifest is reported by key."""
    await persist_sample(snaps, tmp_path / "work")
    (store.root / MANIFEST).write_bytes(b"not zlib at all")
    with pytest.raises(SnapshotCorrupt, match="000000000001"):
        await restore_into(snaps, box)
    with pytest.raises(SnapshotCorrupt):
        await snaps.latest(PREFIX)
    assert_untouched(box)


async def test_persist_after_corrupt_manifest_starts_over(
    snaps: Snapshots, store: LocalObjectStore, tmp_path: Path, box: Path
) -> None:
    """A corrupt newest snapshot does not block the next persist: it uploads in full."""
    work = tmp_path / "work"
    await persist_sample(snaps, work)
    (store.root / MANIFEST).write_bytes(b"junk")
    with dir_fd(work) as fd:
        info = await snaps.persist(PREFIX, fd)
    assert info.seq == 2 and info.hashed_files == 4
    await restore_into(snaps, box)
    assert tree(box / "target") == tree(work)


def _add(entries: list[Any], *new: list[Any]) -> None:
    entries.extend(new)


TAMPERS: dict[str, Callable[[list[Any]], None]] = {
    "absolute path": lambda e: _add(e, ["/tmp/evil", "f", 0o644, 0, 0, "0" * 64, "", []]),
    "dotdot path": lambda e: _add(e, ["../outside/evil", "f", 0o644, 0, 0, "0" * 64, "", []]),
    "dotdot inside": lambda e: _add(e, ["dir/../../outside/evil", "d", 0o755, 0, 0, "", "", []]),
    "child through symlink": lambda e: _add(
        e,
        ["link", "l", 0o777, 0, 0, "", "../outside", []],
        ["link/evil", "f", 0o644, 0, 0, "0" * 64, "", []],
    ),
    "character device": lambda e: _add(e, ["dev", "c", 0o666, 0, 0, "", "", []]),
    "fifo": lambda e: _add(e, ["pipe", "p", 0o666, 0, 0, "", "", []]),
    "duplicate path": lambda e: _add(e, list(e[-1])),
    "missing parent": lambda e: _add(e, ["nodir/evil", "f", 0o644, 0, 0, "0" * 64, "", []]),
    "oversize file": lambda e: e.__setitem__(-1, [*e[-1][:3], 1 << 50, *e[-1][4:]]),
    "nul in path": lambda e: _add(e, ["a\0b", "d", 0o755, 0, 0, "", "", []]),
    "mode beyond bits": lambda e: _add(e, ["m", "d", 0o170755, 0, 0, "", "", []]),
    "piece outside object": lambda e: e.__setitem__(
        -1, [*e[-1][:7], [[e[-1][7][0][0], 10**9, e[-1][7][0][2], *e[-1][7][0][3:]]]]
    ),
    "piece in foreign object": lambda e: e.__setitem__(
        -1, [*e[-1][:7], [["../../other/packs/x", *e[-1][7][0][1:]]]]
    ),
    "content on a link": lambda e: _add(e, ["l2", "l", 0o777, 5, 0, "", "x", []]),
    "empty name": lambda e: _add(e, ["dir//x", "d", 0o755, 0, 0, "", "", []]),
    "hole with stored bytes": lambda e: _hole(e, ["hole", 0, 5, SIZE_OF_B, 0, ""]),
    "hole at an offset": lambda e: _hole(e, ["hole", 7, 0, SIZE_OF_B, 0, ""]),
    "hole with a hash": lambda e: _hole(e, ["hole", 0, 0, SIZE_OF_B, 0, "0" * 64]),
    "compressed hole": lambda e: _hole(e, ["hole", 0, 0, SIZE_OF_B, 1, ""]),
    "hole past its file": lambda e: _hole(e, ["hole", 0, 0, SIZE_OF_B + 1, 0, ""]),
    "empty hole": lambda e: _hole(e, ["hole", 0, 0, 0, 0, ""], *_entry(e, "dir/b.bin")[7]),
    "negative hole": lambda e: _hole(e, ["hole", 0, 0, -1, 0, ""], ["hole", 0, 0, SIZE_OF_B + 1, 0, ""]),
    "hole as big as a file past the limit": lambda e: _add(
        e, ["huge", "f", 0o644, 2 << 40, 0, "0" * 64, "", [["hole", 0, 0, 2 << 40, 0, ""]]]
    ),
}


def _entry(entries: list[Any], path: str) -> list[Any]:
    return next(entry for entry in entries if entry[0] == path)


def _hole(entries: list[Any], *pieces: list[Any]) -> None:
    """dir/b.bin (chunked, SIZE_OF_B bytes) made of `pieces`."""
    _entry(entries, "dir/b.bin")[7] = list(pieces)


@pytest.mark.parametrize("kind", sorted(TAMPERS))
async def test_tampered_manifest_is_rejected_before_writing(
    snaps: Snapshots, store: LocalObjectStore, tmp_path: Path, box: Path, kind: str
) -> None:
    """Every malicious manifest shape is refused before anything is written, inside or outside."""
    await persist_sample(snaps, tmp_path / "work")
    body = read_manifest(store, MANIFEST)
    TAMPERS[kind](body["entries"])
    write_manifest(store, MANIFEST, body)
    with pytest.raises(SnapshotCorrupt):
        await restore_into(snaps, box)
    assert_untouched(box)


def _copies(body: dict[str, Any], *names: str) -> None:
    """Entries with c.txt's content under other names (hard links of it would look like these)."""
    original = next(entry for entry in body["entries"] if entry[0] == "c.txt")
    body["entries"] += [[name, *original[1:]] for name in names]


LINK_TAMPERS: dict[str, tuple[tuple[str, ...], Any]] = {  # copies of c.txt to add, then "links"
    "to itself": ((), [["c.txt", "c.txt"]]),
    "to a directory": ((), [["c.txt", "dir"]]),
    "to a missing file": ((), [["c.txt", "nope.txt"]]),
    "to outside": ((), [["c.txt", "../outside/x"]]),
    "of a name not in the snapshot": ((), [["evil", "c.txt"]]),
    "to a different file": ((), [["c.txt", "dir/a.txt"]]),
    "chained": (("c2.txt", "c3.txt"), [["c2.txt", "c.txt"], ["c3.txt", "c2.txt"]]),
    "listed twice": (("c2.txt",), [["c2.txt", "c.txt"], ["c2.txt", "c.txt"]]),
    "not a pair": ((), [["c.txt"]]),
    "not a list": ((), {"c.txt": "dir/a.txt"}),
}


@pytest.mark.parametrize("kind", sorted(LINK_TAMPERS))
async def test_tampered_hard_links_are_rejected_before_writing(
    snaps: Snapshots, store: LocalObjectStore, tmp_path: Path, box: Path, kind: str
) -> None:
    """A hard link may only join two files of the snapshot with one content, never a directory,
    a name outside, itself or another link: anything else is refused before a byte is written."""
    await persist_sample(snaps, tmp_path / "work")
    body = read_manifest(store, MANIFEST)
    copies, body["links"] = LINK_TAMPERS[kind]
    _copies(body, *copies)
    write_manifest(store, MANIFEST, body)
    with pytest.raises(SnapshotCorrupt):
        await restore_into(snaps, box)
    assert_untouched(box)


async def test_symlinked_components_are_not_followed_when_reading(tmp_path: Path) -> None:
    """A directory swapped for a link after the walk is not followed when its files are read."""
    work, outside = tmp_path / "work", tmp_path / "outside"
    write(work, "sub/secret.txt", b"inside")
    write(outside, "secret.txt", b"HOST SECRET")
    with dir_fd(work) as fd:
        found = scan(fd, Excludes(()))
        reader = Reader(fd, found.root_dev)
        try:
            (work / "sub/secret.txt").unlink()
            (work / "sub").rmdir()
            (work / "sub").symlink_to(outside)
            assert reader.open_file("sub/secret.txt") is None
        finally:
            reader.close()


async def test_symlinks_in_workspace_are_recorded_not_followed(
    snaps: Snapshots, tmp_path: Path, box: Path
) -> None:
    """Links to host files or dirs are stored as links: the host content never enters a snapshot."""
    work, outside = tmp_path / "work", tmp_path / "host"
    write(outside, "passwd", b"HOST SECRET")
    write(work, "ok", b"ok")
    (work / "to-file").symlink_to(outside / "passwd")
    (work / "to-dir").symlink_to(outside)
    with dir_fd(work) as fd:
        info = await snaps.persist(PREFIX, fd)
    assert info.files == 1 and info.logical_bytes == 2
    await restore_into(snaps, box)
    assert (box / "target/to-dir").is_symlink() and (box / "target/to-file").is_symlink()


async def test_workspace_root_given_as_symlink_is_refused(snaps: Snapshots, tmp_path: Path) -> None:
    """A root whose last component was swapped for a link is not walked through."""
    real = tmp_path / "real"
    write(real, "f", b"x")
    (tmp_path / "ws").symlink_to(real)
    parent_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError):
            os.open("ws", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
        path_fd = os.open("ws", os.O_PATH | os.O_NOFOLLOW, dir_fd=parent_fd)  # an O_PATH fd of the link
        try:
            with pytest.raises(Internal, match="failed on the workspace"):
                await snaps.persist(PREFIX, path_fd)
        finally:
            os.close(path_fd)
    finally:
        os.close(parent_fd)


CRASHING_PERSIST = textwrap.dedent(
    """
    import asyncio, os, sys
    from agentcell.server.clock import FakeClock
    from agentcell.server.storage.local import LocalObjectStore
    from agentcell.server.storage.snapshots import Snapshots

    class Announcing(LocalObjectStore):
        async def put(self, key, data):
            await super().put(key, data)
            if "/packs/" in key or "/blobs/" in key:
                print("uploaded", key, flush=True)
                await asyncio.sleep(3600)  # the parent SIGKILLs us here, mid-persist

    async def main():
        fd = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY)
        await Snapshots(Announcing(sys.argv[1]), FakeClock()).persist("t/f/s", fd)

    asyncio.run(main())
    """
)


def kill_persist_after_first_upload(store_root: Path, work: Path) -> None:
    """Run a persist in a subprocess and SIGKILL it once its first object is stored."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_PERSIST, str(store_root), str(work)],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("uploaded"), line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


async def test_sigkill_mid_persist_keeps_previous_snapshot(
    snaps: Snapshots, store: LocalObjectStore, tmp_path: Path, box: Path
) -> None:
    """A persist killed after uploading part of its objects leaves the previous snapshot restorable,
    and the next persist collects what the dead one left."""
    work = tmp_path / "work"
    await persist_sample(snaps, work)
    before = tree(work)
    write(work, "dir/a.txt", b"changed" * 1000, mtime_ns=None)
    write(work, "new.bin", os.urandom(3 << 20))
    kill_persist_after_first_upload(store.root, work)
    assert [info.seq for info in await snaps.list(PREFIX)] == [1]
    await restore_into(snaps, box)
    assert tree(box / "target") == before
    with dir_fd(work) as fd:
        info = await snaps.persist(PREFIX, fd)
    referenced = set(read_manifest(store, f"{PREFIX}/snapshots/000000000002")["objects"])
    referenced |= set(read_manifest(store, MANIFEST)["objects"])
    stored = {f for f in object_files(store, PREFIX) if not f.startswith("snapshots/")}
    assert info.seq == 2 and stored == referenced


class StallingStore(LocalObjectStore):
    """A local store whose chunk-blob reads never finish (a hung network, say)."""

    async def get(self, key: str) -> bytes:
        if "/blobs/" in key:
            await asyncio.Event().wait()
        return await super().get(key)


async def test_cancelled_restore_leaves_target_empty(
    store: LocalObjectStore, tmp_path: Path, box: Path
) -> None:
    """A restore cancelled half-way (small files written, a large one pending) clears what it wrote."""
    await persist_sample(Snapshots(store, FakeClock()), tmp_path / "work")
    stalling = Snapshots(StallingStore(store.root), FakeClock())
    with dir_fd(box / "target") as fd:
        task = asyncio.create_task(stalling.restore(PREFIX, fd))
        for _ in range(500):
            if (box / "target/c.txt").exists():
                break
            await asyncio.sleep(0.01)
        assert (box / "target/c.txt").exists(), "the restore never got going"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert_untouched(box)


async def test_corrupt_inline_bytes_are_detected(
    snaps: Snapshots, store: LocalObjectStore, tmp_path: Path, box: Path
) -> None:
    """Small files kept inside the manifest are hash-checked like any other piece."""
    work = tmp_path / "work"
    await persist_sample(snaps, work)
    write(work, "c.txt", b"gamma, edited", mtime_ns=None)
    with dir_fd(work) as fd:
        await snaps.persist(PREFIX, fd)
    key = f"{PREFIX}/snapshots/000000000002"
    body = read_manifest(store, key)
    assert body["_inline"], "the edit should have stayed inline"
    body["_inline"] = bytes(b ^ 0x01 for b in body["_inline"])
    write_manifest(store, key, body)
    with pytest.raises(SnapshotCorrupt, match="inline"):
        await restore_into(snaps, box)
    assert_untouched(box)
