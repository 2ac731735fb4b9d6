"""Scheduler logic on the FakeDriver, a real SQLite store and a FakeClock: placement, affinity,
exclusivity, session states, expiry, warm pools, versions, restart recovery."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.errors import Conflict, NotFound
from agentcell.protocol.functions import FunctionConfig
from agentcell.protocol.sessions import SessionCreate, SessionUpdate
from agentcell.server.clock import FakeClock
from agentcell.server.meta.sqlite import SqliteMetaStore
from agentcell.server.sandbox.fake import FakeDriver
from agentcell.server.scheduler.scheduler import Scheduler, SchedulerLimits
from agentcell.server.scheduler.sessions import Session
from agentcell.server.scheduler.workspaces import WorkspaceKeeper
from agentcell.server.storage.objects import open_object_store
from agentcell.server.storage.snapshots import Snapshots

ECHO = Path(__file__).resolve().parent.parent / "fixtures" / "echo_fn"


class Harness:
    def __init__(
        self, tmp_path: Path, driver: FakeDriver | None = None, snapshots: Snapshots | None = None
    ) -> None:
        self.tmp_path = tmp_path
        self.driver = driver or FakeDriver(tmp_path / "sandboxes")
        self.store = SqliteMetaStore(tmp_path / "meta.db")
        self.clock = FakeClock()
        self.objects = open_object_store(f"file://{tmp_path / 'objects'}")
        self.snapshots = snapshots or Snapshots(self.objects, self.clock)
        self.workspaces = WorkspaceKeeper(
            self.driver, self.snapshots, self.store, self.clock, quota_bytes=lambda _: None
        )
        self.scheduler = Scheduler(
            self.driver,
            self.store,
            self.clock,
            tmp_path / "code",
            SchedulerLimits(
                stop_grace_s=0.1,
                max_waiting=4,
                wait_timeout_s=2,
            ),
            self.workspaces,
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        (self.tmp_path / "sandboxes").mkdir(exist_ok=True)
        await self.store.open()
        started = asyncio.Event()
        self._task = asyncio.create_task(self.scheduler.run(3600, started))
        await started.wait()

    async def stop(self, graceful: bool = True) -> None:
        if graceful:
            await self.scheduler.aclose()
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.store.aclose()
        await self.objects.aclose()

    async def deploy(self, archive: Path, **config: object) -> None:
        await self.scheduler.deploy("echo", FunctionConfig(cmd="python3 app.py", **config), archive)


def state(session: Session) -> str:
    """`session.state`, read through a call: mypy would keep the attribute narrowed by an earlier
    assert across the awaits that change it."""
    return session.state


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    await h.start()
    yield h
    await h.stop()
    await h.driver.aclose()


async def route_instance(h: Harness, key: str | None) -> tuple[str, str | None]:
    lease = await h.scheduler.route("echo", key)
    h.scheduler.release(lease)
    return lease.instance.id, lease.issued_key


async def test_a_missing_function_is_named_as_its_tenant_knows_it(harness: Harness) -> None:
    """NotFound says 'echo', not the qualified 'acme.echo' the scheduler keys it by."""
    with pytest.raises(NotFound, match="function 'echo' not found") as info:
        harness.scheduler.function("acme.echo")
    assert "acme" not in info.value.message


async def test_same_key_same_instance_other_key_other_instance(harness: Harness, archive: Path) -> None:
    await harness.deploy(archive)
    a1, _ = await route_instance(harness, "alice-1")
    a2, _ = await route_instance(harness, "alice-1")
    b1, _ = await route_instance(harness, "bob-7")
    assert a1 == a2 and b1 != a1


async def test_a_request_without_key_gets_a_generated_one(harness: Harness, archive: Path) -> None:
    await harness.deploy(archive)
    instance, issued = await route_instance(harness, None)
    assert issued is not None and issued.startswith("ses_")
    assert (await route_instance(harness, issued))[0] == instance


async def test_exclusive_instances_never_serve_two_sessions_under_a_pool_race(
    harness: Harness, archive: Path
) -> None:
    await harness.deploy(archive, min_warm=2, max_instances=20)
    harness.scheduler.fill_once()
    leases = await asyncio.gather(*(harness.scheduler.route("echo", f"k{i}") for i in range(12)))
    instances = [lease.instance.id for lease in leases]
    assert len(set(instances)) == 12
    for lease in leases:
        assert lease.instance.sessions == {lease.session.id}  # type: ignore[union-attr]
        harness.scheduler.release(lease)


async def test_sessions_per_instance_caps_sharing(harness: Harness, archive: Path) -> None:
    await harness.deploy(archive, sessions_per_instance=3, max_instances=10)
    leases = await asyncio.gather(*(harness.scheduler.route("echo", f"k{i}") for i in range(7)))
    per_instance: dict[str, int] = {}
    for lease in leases:
        per_instance[lease.instance.id] = per_instance.get(lease.instance.id, 0) + 1
        harness.scheduler.release(lease)
    assert max(per_instance.values()) <= 3
    assert len(per_instance) == 3


async def test_session_states_and_renewal(harness: Harness, archive: Path) -> None:
    await harness.deploy(archive, session_ttl_s=100, idle_timeout_s=10)
    session = await harness.scheduler.create_session("echo", SessionCreate(key="s1"))
    assert session.state == "idle" and session.instance_id is not None
    lease = await harness.scheduler.route("echo", "s1")
    assert state(session) == "active"
    harness.clock.advance(50)
    assert await harness.scheduler.reap_once(harness.clock.now()) == []  # in flight: never idle
    harness.scheduler.release(lease)
    assert session.state == "idle"
    harness.clock.advance(9.9)
    assert await harness.scheduler.reap_once(harness.clock.now()) == []
    await harness.scheduler.update_session(session.id, SessionUpdate(idle_timeout_s=30))
    harness.clock.advance(29.9)
    assert await harness.scheduler.reap_once(harness.clock.now()) == []
    harness.clock.advance(0.1)
    reaped = await harness.scheduler.reap_once(harness.clock.now())
    assert (session.id, "idle") in reaped
    assert state(session) == "ended" and session.end_reason == "idle"
    info = await harness.scheduler.session_info(session.id)
    assert info.state == "ended" and info.end_reason == "idle"


async def test_ttl_ends_even_an_active_session_and_exclusive_instance_is_destroyed(
    harness: Harness, archive: Path
) -> None:
    await harness.deploy(archive, session_ttl_s=60, idle_timeout_s=3600)
    session = await harness.scheduler.create_session("echo", SessionCreate())
    instance_id = session.instance_id
    harness.clock.advance(60)
    assert (session.id, "ttl") in await harness.scheduler.reap_once(harness.clock.now())
    assert session.end_reason == "ttl"
    assert instance_id not in harness.scheduler.function("echo").instances
    with pytest.raises(NotFound):
        await harness.driver.connect(instance_id or "", 8080)


async def test_expired_key_is_refused_when_reuse_is_disabled(harness: Harness, archive: Path) -> None:
    await harness.deploy(archive, disable_session_id_reuse=True)
    await route_instance(harness, "once")
    session = harness.scheduler.sessions("echo", None, {})[0]
    await harness.scheduler.delete_session(session.id)
    with pytest.raises(Conflict, match="does not reuse"):
        await harness.scheduler.route("echo", "once")


async def test_expired_key_starts_a_new_session_when_reuse_is_allowed(
    harness: Harness, archive: Path
) -> None:
    await harness.deploy(archive)
    first, _ = await route_instance(harness, "again")
    await harness.scheduler.delete_session(harness.scheduler.sessions("echo", None, {})[0].id)
    second, _ = await route_instance(harness, "again")
    assert second != first


async def test_warm_pool_is_kept_filled_and_claims_take_from_it(harness: Harness, archive: Path) -> None:
    await harness.deploy(archive, min_warm=2)
    harness.scheduler.fill_once()
    fn = harness.scheduler.function("echo")
    await asyncio.gather(*(i.ready for i in fn.warm))
    warm_ids = {i.id for i in fn.warm}
    session = await harness.scheduler.create_session("echo", SessionCreate())
    assert session.instance_id in warm_ids
    harness.scheduler.fill_once()
    assert len(fn.warm) == 2


async def test_a_new_version_keeps_old_sessions_on_the_old_version(harness: Harness, archive: Path) -> None:
    await harness.deploy(archive)
    old = await harness.scheduler.create_session("echo", SessionCreate(key="old"))
    await harness.deploy(archive, env={"V": "2"})
    new = await harness.scheduler.create_session("echo", SessionCreate(key="new"))
    assert (old.version, new.version) == (1, 2)
    lease = await harness.scheduler.route("echo", "old")
    assert lease.instance.version == 1
    harness.scheduler.release(lease)


async def test_instance_death_ends_its_session_with_instance_failed(harness: Harness, archive: Path) -> None:
    await harness.deploy(archive)
    a = await harness.scheduler.create_session("echo", SessionCreate(key="a"))
    b = await harness.scheduler.create_session("echo", SessionCreate(key="b"))
    harness.driver.crash(a.instance_id or "")
    for _ in range(200):
        if a.state == "ended":
            break
        await asyncio.sleep(0.01)
    assert a.end_reason == "instance_failed"
    assert b.state == "idle"


async def test_max_instances_queue_then_refuse(harness: Harness, archive: Path) -> None:
    await harness.deploy(archive, max_instances=1)
    await harness.scheduler.create_session("echo", SessionCreate(key="only"))
    from agentcell.errors import QuotaExceeded, Unavailable

    with pytest.raises(Unavailable):  # waits wait_timeout_s (2 s) for a free instance
        await harness.scheduler.create_session("echo", SessionCreate(key="second"))
    waiters = [
        asyncio.create_task(harness.scheduler.create_session("echo", SessionCreate(key=f"w{i}")))
        for i in range(4)
    ]
    await asyncio.sleep(0.05)
    with pytest.raises(QuotaExceeded, match="already wait"):
        await harness.scheduler.create_session("echo", SessionCreate(key="overflow"))
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)


async def test_restart_readopts_live_instances_and_their_sessions(tmp_path: Path, archive: Path) -> None:
    first = Harness(tmp_path)
    await first.start()
    await first.deploy(archive)
    session = await first.scheduler.create_session("echo", SessionCreate(key="keep"))
    await first.stop(graceful=False)  # a crash: instances keep running
    driver = first.driver
    driver.adoptable = {session.instance_id or ""}
    second = Harness(tmp_path, driver)
    await second.start()
    try:
        restored = second.scheduler.session(session.id)
        assert restored.instance_id == session.instance_id and restored.key == "keep"
        lease = await second.scheduler.route("echo", "keep")
        assert lease.instance.id == session.instance_id
        second.scheduler.release(lease)
    finally:
        await second.stop()
        await driver.aclose()
