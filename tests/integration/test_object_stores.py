"""Contract tests: the same functions run against LocalObjectStore and S3ObjectStore (a real
SeaweedFS on loopback, started once per session by `tests/s3server.py`)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agentcell.errors import InvalidArgument, NotFound, Unavailable
from agentcell.server.clock import FakeClock
from agentcell.server.storage.objects import PART_BYTES, ObjectInfo, ObjectStore, open_object_store
from agentcell.server.storage.s3 import S3Config, S3ObjectStore
from agentcell.server.storage.snapshots import Snapshots
from tests.s3server import S3Server, s3_server  # noqa: F401  (the fixture)


@pytest.fixture(params=["local", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str | None]]:
    if request.param == "local":
        yield f"file://{tmp_path}/objects", None
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        yield f"s3://{server.bucket}/t-{uuid.uuid4().hex[:8]}", server.endpoint


@pytest.fixture
async def store(store_url: tuple[str, str | None]) -> AsyncIterator[ObjectStore]:
    url, endpoint = store_url
    opened = open_object_store(url, s3_endpoint=endpoint, s3_access_key="any", s3_secret_key="any")
    yield opened
    await opened.delete_prefix("")
    await opened.aclose()


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await asyncio.sleep(0)


async def test_put_get_exists_delete(store: ObjectStore) -> None:
    """A put object reads back byte for byte, exists, and is gone after delete (twice is fine)."""
    await store.put("a/b/c.bin", b"\x00hello\xff")
    assert await store.get("a/b/c.bin") == b"\x00hello\xff"
    assert await store.exists("a/b/c.bin")
    assert not await store.exists("a/b/other")
    await store.delete("a/b/c.bin")
    await store.delete("a/b/c.bin")
    assert not await store.exists("a/b/c.bin")


async def test_empty_object(store: ObjectStore) -> None:
    """Zero-length objects are objects."""
    await store.put("empty", b"")
    assert await store.get("empty") == b""
    assert await store.list("") == [ObjectInfo("empty", 0)]


async def test_replace_overwrites(store: ObjectStore) -> None:
    """put on an existing key replaces it."""
    await store.put("k", b"old")
    await store.put("k", b"new!")
    assert await store.get("k") == b"new!"
    assert await store.list("k") == [ObjectInfo("k", 4)]


async def test_list_is_sorted_prefix_filtered_and_sized(store: ObjectStore) -> None:
    """list(prefix) returns every key under a plain string prefix, sorted, with sizes."""
    for key in ["s/b", "s/a/1", "s/a/2", "t/x", "sa"]:
        await store.put(key, key.encode())
    assert [i.key for i in await store.list("s/")] == ["s/a/1", "s/a/2", "s/b"]
    assert [i.key for i in await store.list("s")] == ["s/a/1", "s/a/2", "s/b", "sa"]
    assert [i.key for i in await store.list("s/a")] == ["s/a/1", "s/a/2"]
    assert await store.list("s/a/1") == [ObjectInfo("s/a/1", 5)]
    assert await store.list("nothing/") == []
    assert len(await store.list("")) == 5


async def test_list_pages_past_one_thousand(store: ObjectStore) -> None:
    """Listings larger than one S3 page (1000 keys) come back whole."""
    sem = asyncio.Semaphore(32)

    async def put(i: int) -> None:
        async with sem:
            await store.put(f"many/{i:05d}", b"x")

    await asyncio.gather(*(put(i) for i in range(1100)))
    keys = [info.key for info in await store.list("many/")]
    assert keys == [f"many/{i:05d}" for i in range(1100)]
    assert await store.delete_prefix("many/") == 1100
    assert await store.list("many/") == []


async def test_delete_prefix_counts_and_spares_others(store: ObjectStore) -> None:
    """delete_prefix removes exactly the keys under the prefix."""
    for key in ["p/1", "p/2/3", "q/1"]:
        await store.put(key, b"v")
    assert await store.delete_prefix("p/") == 2
    assert [i.key for i in await store.list("")] == ["q/1"]
    assert await store.delete_prefix("p/") == 0


async def test_missing_key_is_not_found(store: ObjectStore) -> None:
    """get and get_stream of a missing key raise NotFound (the stream before any chunk)."""
    with pytest.raises(NotFound):
        await store.get("missing/key")
    stream = store.get_stream("missing/key")
    with pytest.raises(NotFound):
        await anext(stream)


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "a/./b", "a/../b", "..", "nul\0byte", "x" * 1025, "trailing/"]
)
async def test_bad_keys_are_invalid_arguments(store: ObjectStore, key: str) -> None:
    """Every operation validates its key before touching the store."""
    with pytest.raises(InvalidArgument):
        await store.put(key, b"v")
    with pytest.raises(InvalidArgument):
        await store.get(key)
    with pytest.raises(InvalidArgument):
        await store.exists(key)
    with pytest.raises(InvalidArgument):
        await store.delete(key)


async def test_streaming_round_trip(store: ObjectStore) -> None:
    """put_stream of many small chunks stores their concatenation; get_stream yields it back."""
    data = os.urandom(3 << 20)
    assert await store.put_stream("s/obj", chunks_of(data, 100_000)) == len(data)
    got = [chunk async for chunk in store.get_stream("s/obj", chunk_bytes=1 << 20)]
    assert b"".join(got) == data
    assert max(len(chunk) for chunk in got) <= 1 << 20


async def test_large_object_uses_several_parts(store: ObjectStore) -> None:
    """An object larger than one part (multipart on S3) round-trips intact."""
    data = os.urandom(PART_BYTES * 2 + 12345)
    assert await store.put_stream("big/obj", chunks_of(data, 1 << 20)) == len(data)
    assert (await store.list("big/")) == [ObjectInfo("big/obj", len(data))]
    assert await store.get("big/obj") == data


async def test_failed_stream_leaves_nothing(store: ObjectStore) -> None:
    """A producer that fails mid-stream leaves neither the object nor a half-written one."""

    async def failing() -> AsyncIterator[bytes]:
        yield os.urandom(PART_BYTES + 1)
        raise RuntimeError("producer broke")

    with pytest.raises(RuntimeError):
        await store.put_stream("half/obj", failing())
    assert await store.list("half/") == []


async def test_atomic_replace_readers_see_old_or_new(store: ObjectStore) -> None:
    """While an object is replaced again and again, every read returns one whole version."""
    versions = [bytes([i]) * (1 << 20) for i in range(4)]
    await store.put("atomic", versions[0])
    seen: set[int] = set()

    async def writer() -> None:
        for round_ in range(12):
            await store.put("atomic", versions[round_ % 4])

    async def reader() -> None:
        for _ in range(24):
            data = await store.get("atomic")
            assert data in versions, "a read saw a mix of two versions"
            seen.add(data[0])

    await asyncio.gather(writer(), reader(), reader())
    assert seen


async def test_s3_store_unreachable_is_unavailable() -> None:
    """A dead endpoint gives Unavailable, and the message carries no credentials."""
    config = S3Config("http://127.0.0.1:9", "bucket", "", "us-east-1", "AKID", "s3cr3t")
    store = S3ObjectStore(config)
    try:
        with pytest.raises(Unavailable) as caught:
            await store.get("k")
        assert "s3cr3t" not in str(caught.value) and "AKID" not in str(caught.value)
        assert "s3cr3t" not in repr(store)
    finally:
        await store.aclose()


async def test_s3_missing_bucket_is_unavailable(s3_server: S3Server) -> None:  # noqa: F811
    """A bucket that does not exist is a configuration problem (Unavailable), not a missing object."""
    store = open_object_store("s3://no-such-bucket-here", s3_endpoint=s3_server.endpoint)
    try:
        with pytest.raises(Unavailable):
            await store.list("")
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "url", ["relative/dir", "file://host/dir", "s3://", "http://x/y", "s3://bucket/../x", "ftp://a"]
)
def test_bad_store_urls_say_what_to_write(url: str) -> None:
    """open_object_store rejects what it cannot open, naming the accepted forms."""
    with pytest.raises(InvalidArgument, match="s3://bucket"):
        open_object_store(url)


def test_bad_url_message_hides_userinfo() -> None:
    """Credentials pasted into a URL are not echoed back."""
    with pytest.raises(InvalidArgument) as caught:
        open_object_store("http://user:topsecret@host/x")
    assert "topsecret" not in str(caught.value)


async def test_snapshot_round_trip_on_each_store(store: ObjectStore, tmp_path: Path) -> None:
    """Snapshots work unchanged on either store: persist, change, persist, restore the latest."""
    work, target = tmp_path / "work", tmp_path / "target"
    (work / "src").mkdir(parents=True)
    target.mkdir()
    (work / "src/app.py").write_bytes(b"print('v1')\n")
    (work / "big.bin").write_bytes(os.urandom(PART_BYTES + 100))
    (work / "link").symlink_to("src/app.py")
    snaps = Snapshots(store, FakeClock(), keep=2)
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        await snaps.persist("ten/fn/ses", fd)
        (work / "src/app.py").write_bytes(b"print('v2')\n")
        info = await snaps.persist("ten/fn/ses", fd)
    finally:
        os.close(fd)
    assert info.seq == 2 and info.uploaded_bytes < 10_000
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    try:
        restored = await snaps.restore("ten/fn/ses", fd)
    finally:
        os.close(fd)
    assert restored is not None and restored.seq == 2
    assert (target / "src/app.py").read_bytes() == b"print('v2')\n"
    assert (target / "big.bin").read_bytes() == (work / "big.bin").read_bytes()
    assert os.readlink(target / "link") == "src/app.py"
    assert await snaps.stored_bytes("ten/fn/ses") > info.stored_bytes  # snapshot 1 is kept too


async def test_s3_signatures_are_verified_by_a_real_server(tmp_path: Path) -> None:
    """Against a SeaweedFS with authentication on, every kind of request we sign (object paths,
    listing queries, multipart, batch delete) is accepted, and a wrong secret is refused."""
    keys = ("AKIDTEST", "secret/with+odd=chars")
    with S3Server(bucket="signed", credentials=keys) as server:
        url = "s3://signed/pre fix"
        good = open_object_store(
            url, s3_endpoint=server.endpoint, s3_access_key=keys[0], s3_secret_key=keys[1]
        )
        bad = open_object_store(
            url, s3_endpoint=server.endpoint, s3_access_key=keys[0], s3_secret_key="wrong"
        )
        try:
            data = os.urandom(PART_BYTES + 10)
            await good.put_stream("dir/big obj+1", chunks_of(data, 1 << 20))
            await good.put("dir/small~é", b"v")
            assert [i.key for i in await good.list("dir/")] == ["dir/big obj+1", "dir/small~é"]
            assert await good.get("dir/big obj+1") == data
            assert await good.delete_prefix("dir/") == 2
            with pytest.raises(Unavailable, match="403"):
                await bad.put("k", b"v")
            assert "wrong" not in repr(bad)
        finally:
            await good.aclose()
            await bad.aclose()
