"""Snapshots on a local object store and tmp dirs: round trips, incremental uploads, versions and GC."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
from pathlib import Path

import pytest

from agentcell.errors import InvalidArgument, NotFound
from agentcell.server.clock import FakeClock
from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.pieces import CHUNK_BYTES, SMALL_FILE_BYTES
from agentcell.server.storage.snapshots import SnapshotInfo, Snapshots
from tests.unit.snapshot_helpers import OLD_NS, age, dir_fd, object_files, tree, write

PREFIX = "tenant/fn/ses_1"


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


async def restore(snaps: Snapshots, root: Path, seq: int | None = None) -> SnapshotInfo | None:
    with dir_fd(root, os.O_PATH) as fd:
        return await snaps.restore(PREFIX, fd, seq=seq)


def sample_workspace(root: Path) -> None:
    write(root, "README.md", b"# project\n" * 50)
    write(root, "run.sh", b"#!/bin/sh\necho hi\n", 0o755)
    write(root, "secret.key", os.urandom(64), 0o600)
    write(root, "src/app/main.py", b"print('hello')\n" * 100)
    write(root, "src/app/data.bin", os.urandom(SMALL_FILE_BYTES + 12345))  # a chunked "large" file
    write(root, "src/empty.txt", b"")
    (root / "src/app/rel-link").symlink_to("main.py")
    (root / "abs-link").symlink_to("/etc/passwd")
    (root / "dangling").symlink_to("does/not/exist")
    (root / "empty-dir/nested").mkdir(parents=True)
    (root / "private").mkdir(mode=0o700)
    write(root, "private/notes", b"n")
    age(root)


async def test_round_trip_keeps_bytes_modes_mtimes_links_and_empty_dirs(
    snaps: Snapshots, work: Path, target: Path
) -> None:
    """Restore reproduces every file's bytes, mode (0o755, 0o600), mtime, links as links, empty dirs."""
    sample_workspace(work)
    info = await persist(snaps, work)
    assert info.seq == 1 and info.files == 7 and info.skipped == 0
    restored = await restore(snaps, target)
    assert restored is not None and restored.seq == 1
    assert tree(target) == tree(work)
    assert (target / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (target / "secret.key").stat().st_mode & 0o777 == 0o600
    assert os.readlink(target / "abs-link") == "/etc/passwd"


async def test_restore_of_nothing_is_none(snaps: Snapshots, target: Path) -> None:
    """A brand new workspace has no snapshot: restore says None and writes nothing."""
    assert await restore(snaps, target) is None
    assert await snaps.latest(PREFIX) is None
    assert await snaps.list(PREFIX) == []
    assert os.listdir(target) == []


async def test_restore_replaces_existing_contents(snaps: Snapshots, work: Path, target: Path) -> None:
    """Restore clears what the target held, without following a link planted there."""
    outside = target.parent / "outside"
    outside.mkdir()
    write(outside, "keep.txt", b"keep")
    write(work, "a/x", b"from snapshot")
    await persist(snaps, work)
    (target / "a").symlink_to(outside)
    write(target, "stale.txt", b"old")
    await restore(snaps, target)
    assert sorted(os.listdir(target)) == ["a"]
    assert not (target / "a").is_symlink()
    assert (target / "a/x").read_bytes() == b"from snapshot"
    assert sorted(os.listdir(outside)) == ["keep.txt"]


async def test_large_files_are_chunked_and_round_trip(snaps: Snapshots, work: Path, target: Path) -> None:
    """A file of several chunks restores byte for byte."""
    data = os.urandom(CHUNK_BYTES * 2 + 777)
    write(work, "big.bin", data)
    info = await persist(snaps, work)
    assert info.logical_bytes == len(data)
    await restore(snaps, target)
    assert (target / "big.bin").read_bytes() == data


async def test_excludes_by_name_at_any_depth_and_by_path(snaps: Snapshots, work: Path, target: Path) -> None:
    """Bare names match at any depth, globs with '/' match paths; excluded dirs are not entered."""
    write(work, "src/index.js", b"x")
    write(work, "node_modules/left-pad/index.js", b"y")
    write(work, "pkg/node_modules/a.js", b"z")
    write(work, "pkg/mod.pyc", b"c")
    write(work, "build/out/app", b"o")
    write(work, "build/keep", b"k")
    os.mkfifo(work / "node_modules/fifo")  # would count as skipped if the walk went in
    exclude = ("node_modules", "*.pyc", "build/out")
    info = await persist(snaps, work, exclude)
    assert info.skipped == 0
    await restore(snaps, target)
    assert sorted(p for p in tree(target) if (target / p).is_file()) == ["build/keep", "src/index.js"]


async def test_bad_arguments_are_invalid(snaps: Snapshots, work: Path) -> None:
    """Prefixes are store keys and exclude patterns must be non-empty."""
    with dir_fd(work) as fd:
        with pytest.raises(InvalidArgument):
            await snaps.persist("/abs", fd)
        with pytest.raises(InvalidArgument):
            await snaps.persist("a/../b", fd)
        with pytest.raises(InvalidArgument):
            await snaps.persist(PREFIX, fd, [""])
    with pytest.raises(InvalidArgument):
        Snapshots(LocalObjectStore("/tmp/x"), FakeClock(), keep=0)


async def test_fifos_sockets_are_skipped_and_counted(snaps: Snapshots, work: Path, target: Path) -> None:
    """Special files are never opened (a fifo would block) and are counted as skipped."""
    write(work, "ok.txt", b"ok")
    os.mkfifo(work / "pipe")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(work / "sock"))
        info = await asyncio.wait_for(persist(snaps, work), 10)
    assert info.skipped == 2 and info.files == 1
    await restore(snaps, target)
    assert sorted(os.listdir(target)) == ["ok.txt"]


async def test_incremental_persist_uploads_only_the_change(
    snaps: Snapshots, store: LocalObjectStore, work: Path
) -> None:
    """After a one-file change, only that file is hashed and uploaded (plus the manifest)."""
    for i in range(50):
        write(work, f"src/f{i:02d}.txt", os.urandom(20_000))
    first = await persist(snaps, work)
    assert first.hashed_files == 50
    write(work, "src/f07.txt", b"changed", mtime_ns=None)
    second = await persist(snaps, work)
    assert second.hashed_files == 1
    assert second.uploaded_bytes < 5_000, second
    assert second.uploaded_bytes < first.uploaded_bytes / 100


async def test_rename_and_copy_upload_nothing_new(snaps: Snapshots, work: Path, target: Path) -> None:
    """Content already stored is referenced, not uploaded again, wherever it moves."""
    write(work, "a.txt", os.urandom(200_000))  # beyond INLINE_BYTES: stored in a pack
    await persist(snaps, work)
    os.rename(work / "a.txt", work / "b.txt")
    (work / "c.txt").write_bytes((work / "b.txt").read_bytes())
    info = await persist(snaps, work)
    assert info.hashed_files == 2 and info.uploaded_bytes < 2_000
    await restore(snaps, target)
    assert (target / "c.txt").read_bytes() == (work / "b.txt").read_bytes()


async def test_large_file_change_uploads_one_chunk(snaps: Snapshots, work: Path, target: Path) -> None:
    """Changing one byte of a 3-chunk file uploads one chunk, not the file."""
    data = bytearray(os.urandom(CHUNK_BYTES * 3))
    write(work, "db.sqlite", bytes(data))
    await persist(snaps, work)
    data[CHUNK_BYTES + 10] ^= 0xFF
    write(work, "db.sqlite", bytes(data), mtime_ns=None)
    info = await persist(snaps, work)
    assert CHUNK_BYTES <= info.uploaded_bytes < CHUNK_BYTES + 10_000
    await restore(snaps, target)
    assert (target / "db.sqlite").read_bytes() == bytes(data)


async def test_recent_mtimes_are_rehashed_not_trusted(snaps: Snapshots, work: Path, target: Path) -> None:
    """A same-size rewrite within the mtime tick of the last walk is still caught (racy clean)."""
    path = write(work, "hot.txt", b"AAAA", mtime_ns=None)
    await persist(snaps, work)
    st = path.stat()
    path.write_bytes(b"BBBB")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    info = await persist(snaps, work)
    assert info.hashed_files == 1
    await restore(snaps, target)
    assert (target / "hot.txt").read_bytes() == b"BBBB"


async def test_keep_n_and_garbage_collection(store: LocalObjectStore, work: Path, target: Path) -> None:
    """Only the last `keep` snapshots stay, with exactly the objects they reference."""
    snaps = Snapshots(store, FakeClock(), keep=2)
    contents = []
    for round_ in range(5):
        content = os.urandom(100_000)  # beyond INLINE_BYTES: one new pack per round
        contents.append(content)
        write(work, "f.bin", content, mtime_ns=OLD_NS + round_)
        write(work, f"big{round_}.bin", os.urandom(SMALL_FILE_BYTES + 1))
        (work / f"big{round_ - 2}.bin").unlink(missing_ok=True)
        await persist(snaps, work)
    assert [info.seq for info in await snaps.list(PREFIX)] == [4, 5]
    files = object_files(store, PREFIX)
    assert [f for f in files if f.startswith("snapshots/")] == [
        "snapshots/000000000004",
        "snapshots/000000000005",
    ]
    assert len([f for f in files if f.startswith("blobs/")]) == 3  # big2 (kept by 4), big3, big4
    assert len([f for f in files if f.startswith("packs/")]) == 2
    with pytest.raises(NotFound):
        await restore(snaps, target, seq=3)
    await restore(snaps, target, seq=4)
    assert (target / "f.bin").read_bytes() == contents[3]
    stored = await snaps.stored_bytes(PREFIX)
    assert stored == sum(p.stat().st_size for p in (store.root / PREFIX).rglob("*") if p.is_file())


async def test_sparse_packs_are_rewritten(snaps: Snapshots, store: LocalObjectStore, work: Path) -> None:
    """When most of a pack's files change, its survivors move to the new pack and the old one goes."""
    for i in range(10):
        write(work, f"f{i}", os.urandom(10_000))
    await persist(snaps, work)
    for i in range(8):
        write(work, f"f{i}", os.urandom(10_000), mtime_ns=OLD_NS + 1)
    for i in range(3):  # age the first snapshot out of `keep` (each persist finds a change)
        write(work, f"tick{i}", b"t", mtime_ns=OLD_NS + 2)
        await persist(snaps, work)
    packs = [f for f in object_files(store, PREFIX) if f.startswith("packs/")]
    assert packs == ["packs/000000000002-0000"]
    stored = await snaps.stored_bytes(PREFIX)
    assert stored < 10 * 10_000 * 1.2


async def test_concurrent_persists_of_one_prefix_serialize(
    snaps: Snapshots, work: Path, target: Path
) -> None:
    """Two persists at once both succeed, one after the other (the second finds nothing new, so
    it keeps the first's snapshot), and the result restores."""
    sample_workspace(work)
    first, second = await asyncio.gather(persist(snaps, work), persist(snaps, work))
    assert [first.seq, second.seq] == [1, 1] and second.uploaded_bytes == 0
    await restore(snaps, target)
    assert tree(target) == tree(work)


async def test_delete_all_removes_every_object(snaps: Snapshots, store: LocalObjectStore, work: Path) -> None:
    """delete_all leaves nothing under the prefix and the next persist starts again at 1."""
    sample_workspace(work)
    await persist(snaps, work)
    await snaps.delete_all(PREFIX)
    assert await store.list(PREFIX + "/") == []
    assert await snaps.stored_bytes(PREFIX) == 0
    assert (await persist(snaps, work)).seq == 1


async def test_sweep_deletes_only_what_no_snapshot_references(
    snaps: Snapshots, store: LocalObjectStore, work: Path, target: Path
) -> None:
    """What a killed persist uploaded is collected, every snapshot (even beyond `keep`) and what it
    references stays; with no snapshot at all everything under the prefix goes; an unreadable
    snapshot makes it delete nothing."""
    sample_workspace(work)
    await persist(snaps, work)
    kept = object_files(store, PREFIX)
    await store.put(f"{PREFIX}/blobs/{'ab' * 32}", b"left by a killed persist")
    await store.put(f"{PREFIX}/packs/000000000002-0000", b"and a pack")
    swept = await snaps.sweep(PREFIX)
    assert (swept.deleted_objects, swept.deleted_bytes) == (2, 34)
    assert swept.newest is not None and swept.newest.seq == 1
    assert object_files(store, PREFIX) == kept
    await restore(snaps, target)
    assert tree(target) == tree(work)

    await store.put(f"{PREFIX}/blobs/{'cd' * 32}", b"x")
    await store.put(f"{PREFIX}/snapshots/000000000002", b"not a manifest")
    assert (await snaps.sweep(PREFIX)).deleted_objects == 0  # cannot tell what 2 needs

    await snaps.delete_all(PREFIX)
    await store.put(f"{PREFIX}/blobs/{'ef' * 32}", b"no snapshot references it")
    swept = await snaps.sweep(PREFIX)
    assert (swept.newest, swept.deleted_objects) == (None, 1)
    assert await store.list(f"{PREFIX}/") == [] and not (store.root / PREFIX).exists()


async def test_info_accounts_bytes(snaps: Snapshots, work: Path) -> None:
    """latest() reports what persist reported: files, logical and stored bytes."""
    sample_workspace(work)
    info = await persist(snaps, work)
    latest = await snaps.latest(PREFIX)
    assert latest is not None
    assert (latest.seq, latest.files, latest.logical_bytes, latest.stored_bytes) == (
        info.seq,
        info.files,
        info.logical_bytes,
        info.stored_bytes,
    )
    assert info.stored_bytes == await snaps.stored_bytes(PREFIX)


async def test_keep_per_persist_overrides_the_default(snaps: Snapshots, work: Path) -> None:
    """persist(keep=1) keeps only the snapshot it wrote, whatever the constructor said."""
    for round_ in range(3):
        write(work, "f", os.urandom(100), mtime_ns=OLD_NS + round_)
        with dir_fd(work) as fd:
            await snaps.persist(PREFIX, fd, keep=1 if round_ == 2 else None)
    assert [info.seq for info in await snaps.list(PREFIX)] == [3]
    with dir_fd(work) as fd, pytest.raises(InvalidArgument):
        await snaps.persist(PREFIX, fd, keep=0)


async def test_small_change_stays_in_the_manifest(
    snaps: Snapshots, store: LocalObjectStore, work: Path
) -> None:
    """A change of a few small files is written as one object (the manifest), not a pack too."""
    for i in range(20):
        write(work, f"src/f{i:02d}.txt", os.urandom(20_000))
    await persist(snaps, work)
    write(work, "src/f03.txt", b"small edit", mtime_ns=None)
    write(work, "src/new.txt", b"new file", mtime_ns=None)
    before = object_files(store, PREFIX)
    info = await persist(snaps, work)
    added = sorted(set(object_files(store, PREFIX)) - set(before))
    assert added == ["snapshots/000000000002"]
    assert info.hashed_files == 2


def mutate(root: Path, rng: random.Random, round_: int) -> None:
    """One round of the edits an agent makes: add, rewrite, delete, chmod, link, nest."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    for _ in range(rng.randint(1, 6)):
        action = rng.choice(["add", "add", "rewrite", "delete", "chmod", "link", "big"])
        if action == "add" or not files:
            size = rng.choice([0, 10, 3000, 70_000, 300_000])
            write(
                root,
                f"d{rng.randint(0, 4)}/n{round_}-{rng.randint(0, 99)}.txt",
                rng.randbytes(size),
                mtime_ns=None,
            )
        elif action == "rewrite":
            target = rng.choice(files)
            target.write_bytes(rng.randbytes(rng.choice([5, 5000, 90_000])))
        elif action == "delete":
            victim = rng.choice(files)
            victim.unlink()
            files.remove(victim)
        elif action == "chmod":
            rng.choice(files).chmod(rng.choice([0o600, 0o644, 0o755, 0o700]))
        elif action == "link":
            link = root / f"link{round_}"
            if not link.is_symlink():
                link.symlink_to(rng.choice(["d0", "/etc", "missing", str(files[0].relative_to(root))]))
        else:
            write(
                root,
                f"big{round_ % 3}.bin",
                rng.randbytes(SMALL_FILE_BYTES + rng.randint(1, 5000)),
                mtime_ns=None,
            )


async def test_thirty_cycles_of_edit_persist_restore_lose_nothing(
    store: LocalObjectStore, work: Path, tmp_path: Path
) -> None:
    """30 rounds of random edits, each persisted and restored into a fresh directory, come back
    byte for byte and mode for mode (the E2B #884 bug class), with keep=2 collecting as it goes."""
    snaps = Snapshots(store, FakeClock(), keep=2)
    rng = random.Random(884)
    sample_workspace(work)
    for round_ in range(30):
        mutate(work, rng, round_)
        await persist(snaps, work)
        fresh = tmp_path / f"restored-{round_}"
        fresh.mkdir()
        await restore(snaps, fresh)
        assert tree(fresh) == tree(work), f"round {round_} differs"
        shutil.rmtree(fresh)
    assert len(await snaps.list(PREFIX)) == 2


async def test_a_persist_that_finds_nothing_changed_keeps_the_newest_snapshot(tmp_path: Path) -> None:
    """Periodic syncs of an idle session must not push real versions out of the keep window."""
    from agentcell.server.clock import FakeClock
    from agentcell.server.storage.local import LocalObjectStore
    from agentcell.server.storage.snapshots import Snapshots

    work = tmp_path / "work"
    work.mkdir()
    (work / "a.txt").write_text("one")
    snapshots = Snapshots(LocalObjectStore(str(tmp_path / "store")), FakeClock(), keep=2)
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = await snapshots.persist("t/f/k", fd)
        again = await snapshots.persist("t/f/k", fd)
        assert again.seq == first.seq and again.uploaded_bytes == 0
        (work / "a.txt").write_text("two")
        os.utime(work / "a.txt", ns=(0, 123))
        second = await snapshots.persist("t/f/k", fd)
        assert second.seq == first.seq + 1
        assert [s.seq for s in await snapshots.list("t/f/k")] == [first.seq, second.seq]
    finally:
        os.close(fd)
