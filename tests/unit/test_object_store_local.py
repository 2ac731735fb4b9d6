"""LocalObjectStore specifics beyond the shared contract: temp files, pruning, path handling."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.errors import InvalidArgument, NotFound
from agentcell.server.storage.local import TMP_MARK, LocalObjectStore
from agentcell.server.storage.objects import ObjectInfo, open_object_store


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_objects_are_plain_files_under_root(store: LocalObjectStore) -> None:
    """A key maps to root/key, readable by operators with ordinary tools."""
    await store.put("a/b/c", b"data")
    assert (store.root / "a/b/c").read_bytes() == b"data"
    assert all_files(store.root) == ["a/b/c"]


async def test_leftover_temp_files_are_invisible(store: LocalObjectStore) -> None:
    """A temp file left by a crash is neither listed nor readable as an object."""
    await store.put("dir/real", b"x")
    (store.root / "dir" / f"{TMP_MARK}deadbeef").write_bytes(b"half")
    assert await store.list("") == [ObjectInfo("dir/real", 1)]
    with pytest.raises(InvalidArgument):
        await store.get(f"dir/{TMP_MARK}deadbeef")


async def test_delete_prefix_removes_temp_files_of_a_dead_process_only(store: LocalObjectStore) -> None:
    """A temp file written before the store object was made (a killed server's write) goes with
    its prefix, and its directory with it; a newer one (a write in flight) stays."""
    await store.put("p/blobs/a", b"x")
    stale = store.root / "p/blobs" / f"{TMP_MARK}0001"
    stale.write_bytes(b"half")
    os.utime(stale, ns=(store._opened_ns - 1, store._opened_ns - 1))
    (store.root / "q").mkdir()
    (store.root / "q" / f"{TMP_MARK}0002").write_bytes(b"other prefix")
    assert await store.delete_prefix("p/") == 1
    assert not (store.root / "p").exists()
    await store.put("p/blobs/b", b"y")
    (store.root / "p/blobs" / f"{TMP_MARK}0003").write_bytes(b"in flight")
    await store.delete_prefix("p/")
    assert all_files(store.root) == [f"p/blobs/{TMP_MARK}0003", f"q/{TMP_MARK}0002"]


async def test_failed_stream_removes_its_temp_file(store: LocalObjectStore) -> None:
    """A producer failure leaves no temp file behind."""

    async def failing() -> AsyncIterator[bytes]:
        yield b"partial"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.put_stream("x/y", failing())
    assert all_files(store.root) == []


async def test_delete_prunes_empty_directories_but_not_root(store: LocalObjectStore) -> None:
    """Deleting the last key of a directory removes the directory chain, never the root."""
    await store.put("p/q/r/s", b"x")
    await store.put("p/keep", b"y")
    await store.delete("p/q/r/s")
    assert not (store.root / "p/q").exists()
    assert (store.root / "p/keep").exists()
    await store.delete("p/keep")
    assert store.root.is_dir() and list(store.root.iterdir()) == []


async def test_puts_racing_prunes_all_land(store: LocalObjectStore) -> None:
    """Puts into a directory being emptied and pruned at the same time never fail."""

    async def churn(i: int) -> None:
        for j in range(20):
            await store.put(f"hot/{i}-{j}", b"v")
            await store.delete(f"hot/{i}-{j}")

    await asyncio.gather(*(churn(i) for i in range(8)))
    await store.put("hot/last", b"v")
    assert await store.get("hot/last") == b"v"


async def test_directory_is_not_an_object(store: LocalObjectStore) -> None:
    """A key that names a directory of other keys does not exist as an object."""
    await store.put("d/inner", b"x")
    assert not await store.exists("d")
    with pytest.raises(NotFound):
        await store.get("d")
    await store.delete("d")  # idempotent and harmless
    assert await store.exists("d/inner")


async def test_symlink_in_store_is_not_followed_on_read(store: LocalObjectStore, tmp_path: Path) -> None:
    """A link placed in the store does not turn into a read of the file it points at."""
    (tmp_path / "secret").write_bytes(b"host secret")
    await store.put("k", b"v")
    os.symlink(tmp_path / "secret", store.root / "link")
    with pytest.raises(NotFound):
        await store.get("link")
    assert [info.key for info in await store.list("")] == ["k"]


def test_relative_root_is_refused() -> None:
    """The store directory must be absolute; open_object_store accepts both URL forms."""
    with pytest.raises(InvalidArgument):
        LocalObjectStore("relative/dir")
    assert isinstance(open_object_store("/abs/dir"), LocalObjectStore)
    assert isinstance(open_object_store("file:///abs/dir"), LocalObjectStore)
