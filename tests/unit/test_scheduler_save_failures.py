"""When a session's last snapshot cannot be written (the object store down), nothing is lost: a
delete answers Unavailable and keeps the session, the reaper keeps it and tries again (backing
off, within a bound, recording why on the workspace), a shutdown leaves its instance running for
the next start. The last snapshot of an exclusive instance is taken frozen. A restore that meets an
unreachable store is Unavailable, not a damaged workspace. FakeDriver, a local object store that
can be switched off, SQLite and a FakeClock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentcell.errors import Unavailable, WorkspaceCorrupt
from agentcell.protocol.functions import FunctionConfig
from agentcell.server.sandbox.fake import FakeDriver
from agentcell.server.scheduler.scheduler import SchedulerLimits
from agentcell.server.storage.objects import ObjectInfo, ObjectStore
from agentcell.server.storage.snapshots import Snapshots
from tests.unit.test_scheduler import Harness

PERSIST = {"workspace": {"persist": True, "sync_interval_s": 0}}
PATH = "default/echo/k"


class SwitchedStore:
    """An object store that answers like an unreachable S3 endpoint while `down`."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise Unavailable("S3 bucket 'test' at http://127.0.0.1:1 unreachable (ReadTimeout)")

    async def put(self, key: str, data: bytes) -> None:
        self._check()
        await self.inner.put(key, data)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        self._check()
        return await self.inner.put_stream(key, chunks)

    async def get(self, key: str) -> bytes:
        self._check()
        return await self.inner.get(key)

    async def get_stream(self, key: str, chunk_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        self._check()
        async for chunk in self.inner.get_stream(key, chunk_bytes):
            yield chunk

    async def exists(self, key: str) -> bool:
        self._check()
        return await self.inner.exists(key)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        self._check()
        return await self.inner.list(prefix)

    async def delete(self, key: str) -> None:
        self._check()
        await self.inner.delete(key)

    async def delete_prefix(self, prefix: str) -> int:
        self._check()
        return await self.inner.delete_prefix(prefix)

    async def aclose(self) -> None:
        await self.inner.aclose()


def switched(h: Harness) -> SwitchedStore:
    assert isinstance(h.snapshots._store, SwitchedStore)
    return h.snapshots._store


def harness(tmp_path: Path, driver: FakeDriver | None = None, **limits: Any) -> Harness:
    h = Harness(tmp_path, driver)
    h.snapshots = Snapshots(SwitchedStore(h.objects), h.clock)
    h.workspaces._snapshots = h.snapshots
    h.scheduler._limits = SchedulerLimits(stop_grace_s=0.1, max_waiting=4, wait_timeout_s=2, **limits)
    return h


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness_ = harness(tmp_path, final_save_attempts=3, final_save_retry_s=10)
    await harness_.start()
    yield harness_
    switched(harness_).down = False
    await harness_.stop()
    await harness_.driver.aclose()


async def _chunks(data: bytes) -> AsyncIterable[bytes]:
    yield data


async def deploy(h: Harness, archive: Path, **config: Any) -> None:
    await h.scheduler.deploy("echo", FunctionConfig(cmd="python3 app.py", **{**PERSIST, **config}), archive)


async def bound(h: Harness, key: str = "k") -> str:
    lease = await h.scheduler.route("echo", key)
    h.scheduler.release(lease)
    return lease.instance.id


async def write(h: Harness, instance_id: str, data: bytes) -> None:
    await h.driver.files(instance_id).write("work.txt", _chunks(data))


async def read(h: Harness, instance_id: str) -> bytes:
    return b"".join([chunk async for chunk in h.driver.files(instance_id).read("work.txt")])


async def error_of(h: Harness) -> str | None:
    record = await h.store.get_workspace(PATH)
    return None if record is None else record.error


async def test_a_delete_whose_last_snapshot_fails_keeps_the_session_and_its_files(
    h: Harness, archive: Path
) -> None:
    """The tester's bug: DELETE while S3 is down answered 204 and destroyed the only copy."""
    await deploy(h, archive)
    instance = await bound(h)
    await write(h, instance, b"saved once")
    session = h.scheduler.function("echo").sessions["k"]
    await h.scheduler.snapshot_session(session.id)
    await write(h, instance, b"the latest words")
    switched(h).down = True
    with pytest.raises(Unavailable, match=r"unreachable.*nothing was lost") as caught:
        await h.scheduler.delete_session(session.id)
    assert caught.value.retry_after_s
    assert h.scheduler.session(session.id).state == "idle"
    assert await bound(h) == instance, "the same session, on the same instance"
    assert await read(h, instance) == b"the latest words"
    assert instance not in h.driver.frozen, "a failed save thaws the instance"
    switched(h).down = False
    await h.scheduler.delete_session(session.id)
    resumed = await bound(h)
    assert resumed != instance and await read(h, resumed) == b"the latest words"


async def test_the_last_snapshot_of_an_exclusive_instance_is_taken_frozen(h: Harness, archive: Path) -> None:
    await deploy(h, archive)
    instance = await bound(h)
    frozen_while_saving: list[bool] = []
    persist = h.snapshots.persist

    async def watched(*args: Any, **kwargs: Any) -> Any:
        frozen_while_saving.append(instance in h.driver.frozen)
        return await persist(*args, **kwargs)

    h.snapshots.persist = watched  # type: ignore[method-assign]
    await h.scheduler.delete_session(h.scheduler.function("echo").sessions["k"].id)
    assert frozen_while_saving == [True]


async def test_a_shared_instance_is_not_frozen_for_one_sessions_last_snapshot(
    h: Harness, archive: Path
) -> None:
    await deploy(h, archive, sessions_per_instance=4)
    instance = await bound(h, "a")
    assert await bound(h, "b") == instance
    await h.scheduler.delete_session(h.scheduler.function("echo").sessions["a"].id)
    assert h.driver.frozen == set()
    record = await h.store.get_workspace("default/echo/a")
    assert record is not None and record.seq == 1


async def test_the_reaper_keeps_an_expired_session_until_its_save_succeeds(h: Harness, archive: Path) -> None:
    await deploy(h, archive, idle_timeout_s=60)
    instance = await bound(h)
    await write(h, instance, b"unsaved")
    switched(h).down = True
    h.clock.advance(61)
    assert await h.scheduler.reap_once(h.clock.now()) == []
    session = h.scheduler.function("echo").sessions["k"]
    assert session.state == "idle" and session.save_failures == 1
    error = await error_of(h)
    assert error is not None and "unreachable" in error and "tried again in 10 s" in error
    h.clock.advance(5)
    assert await h.scheduler.reap_once(h.clock.now()) == [], "not before its retry time"
    assert session.save_failures == 1
    switched(h).down = False
    h.clock.advance(6)
    assert await h.scheduler.reap_once(h.clock.now()) == [(session.id, "idle")]
    assert await error_of(h) is None, "the snapshot that succeeded clears the error"
    assert await read(h, await bound(h)) == b"unsaved"


async def test_the_reaper_gives_up_after_its_attempts_and_says_so(h: Harness, archive: Path) -> None:
    await deploy(h, archive, idle_timeout_s=60)
    await write(h, await bound(h), b"unsaved")
    switched(h).down = True
    h.clock.advance(61)
    session = h.scheduler.function("echo").sessions["k"]
    delays = []
    for _ in range(3):
        before = h.clock.now()
        await h.scheduler.reap_once(h.clock.now())
        delays.append(session.end_retry_at - before)
        h.clock.advance(max(0.0, session.end_retry_at - h.clock.now()))
    assert delays[:2] == [10, 20]
    assert session.state == "ended" and session.end_reason == "idle"
    error = await error_of(h)
    assert error is not None and "after 3 attempts" in error and "lost" in error


async def test_shutdown_leaves_an_unsaved_instance_running_for_the_next_start(
    tmp_path: Path, archive: Path
) -> None:
    first = harness(tmp_path)
    try:
        await first.start()
        await deploy(first, archive)
        instance = await bound(first)
        await write(first, instance, b"not in any snapshot")
        switched(first).down = True
        await first.stop()  # graceful: the save fails, so the instance is left as a crash leaves it
        assert instance in first.driver.released
    except BaseException:
        await first.driver.aclose()
        raise
    second = harness(tmp_path, first.driver)
    await second.start()
    try:
        error = await error_of(second)
        assert error is not None and "left running for the next start" in error
        session = second.scheduler.function("echo").sessions["k"]
        assert session.instance_id == instance and session.state == "idle"
        assert await read(second, instance) == b"not in any snapshot"
        await second.scheduler.delete_session(session.id)
        assert await read(second, await bound(second)) == b"not in any snapshot"
    finally:
        await second.stop()
        await first.driver.aclose()


async def test_deleting_a_function_whose_session_cannot_be_saved_keeps_both(
    h: Harness, archive: Path
) -> None:
    await deploy(h, archive)
    instance = await bound(h)
    switched(h).down = True
    with pytest.raises(Unavailable, match="was not deleted: 1 session"):
        await h.scheduler.delete_function("echo")
    assert h.scheduler.function("echo").sessions["k"].instance_id == instance
    switched(h).down = False
    await h.scheduler.delete_function("echo")
    assert h.scheduler.functions() == []


async def test_an_unreachable_store_during_a_restore_is_unavailable_not_corrupt(
    h: Harness, archive: Path
) -> None:
    """The session may be retried: nothing is recorded against the workspace, and the retry
    gets the files."""
    await deploy(h, archive)
    await write(h, await bound(h), b"kept")
    await h.scheduler.delete_session(h.scheduler.function("echo").sessions["k"].id)
    switched(h).down = True
    with pytest.raises(Unavailable, match="cannot be restored now") as caught:
        await h.scheduler.route("echo", "k")
    assert not isinstance(caught.value, WorkspaceCorrupt) and caught.value.retry_after_s
    assert await error_of(h) is None
    switched(h).down = False
    assert await read(h, await bound(h)) == b"kept"


async def test_a_successful_restore_clears_an_earlier_error(h: Harness, archive: Path) -> None:
    await deploy(h, archive)
    await write(h, await bound(h), b"kept")
    await h.scheduler.delete_session(h.scheduler.function("echo").sessions["k"].id)
    record = await h.store.get_workspace(PATH)
    assert record is not None
    record.error = "an old failure"
    await h.store.put_workspace(record)
    await bound(h)
    assert await error_of(h) is None


async def test_requests_for_a_key_wait_while_its_session_ends(h: Harness, archive: Path) -> None:
    """They get the session back when its save fails, a new one when it ends."""
    await deploy(h, archive)
    instance = await bound(h)
    gate = asyncio.Event()
    persist = h.snapshots.persist

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await persist(*args, **kwargs)

    h.snapshots.persist = slow  # type: ignore[method-assign]
    switched(h).down = True
    deleting = asyncio.create_task(h.scheduler.delete_session(h.scheduler.function("echo").sessions["k"].id))
    await asyncio.sleep(0.05)
    assert h.scheduler.route_warm("echo", "k") is None
    routing = asyncio.create_task(bound(h))
    await asyncio.sleep(0.05)
    assert not routing.done()
    gate.set()
    with pytest.raises(Unavailable):
        await deleting
    assert await routing == instance


async def test_a_last_snapshot_over_the_storage_quota_ends_the_session_and_records_the_loss(
    h: Harness, archive: Path
) -> None:
    """Waiting cannot mend a full quota (the tenant was refused every snapshot before): the session
    ends as asked, and the workspace says what was lost rather than keeping it silently."""
    await deploy(h, archive)
    instance = await bound(h)
    await write(h, instance, b"saved")
    session = h.scheduler.function("echo").sessions["k"]
    await h.scheduler.snapshot_session(session.id)
    h.workspaces._quota_of = lambda _: 1
    await h.scheduler.delete_session(session.id)
    assert session.state == "ended"
    error = await error_of(h)
    assert error is not None and "quota" in error and "lost" in error
