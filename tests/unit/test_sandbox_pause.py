"""SandboxPauses on the FakeDriver, a real local object store, SQLite and a FakeClock: retention,
the storage quota, pause at the timeout, reloading after a restart, a damaged snapshot, and the
metrics ring."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentcell.errors import Conflict, NotFound, QuotaExceeded, Unavailable, WorkspaceCorrupt
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.server.auth.principal import Principal, acting_as
from agentcell.server.clock import FakeClock
from agentcell.server.interpreter.contexts import Interpreter
from agentcell.server.meta.records import PausedSandboxRecord
from agentcell.server.meta.sqlite import SqliteMetaStore
from agentcell.server.sandbox.fake import FakeDriver
from agentcell.server.scheduler.sandbox_metrics import SandboxMetrics, _cpu_pct
from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.sandboxes import SandboxService
from agentcell.server.scheduler.workspaces import WorkspaceKeeper
from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.snapshots import Snapshots
from tests.service_loop import running
from tests.unit.test_scheduler_save_failures import SwitchedStore

RETENTION_S = 3600.0


@dataclass
class World:
    service: SandboxService
    pauses: SandboxPauses
    driver: FakeDriver
    clock: FakeClock
    store: SqliteMetaStore
    keeper: WorkspaceKeeper
    snapshots: Snapshots
    objects: Path
    quota: list[int | None]

    def new_pauses(self) -> SandboxPauses:
        """Another SandboxPauses on the same store (a restarted server's)."""
        return SandboxPauses(
            self.service,
            self.driver,
            self.snapshots,
            self.store,
            self.keeper,
            self.clock,
            retention_s=RETENTION_S,
        )


@contextlib.asynccontextmanager
async def built_world(tmp_path: Path, code: bool = False, max_sandboxes: int = 4) -> AsyncIterator[World]:
    """A sandbox service on the fake driver (running at most `max_sandboxes`) with pauses over a
    local object store; with `code`, a code interpreter too."""
    driver, clock = FakeDriver(tmp_path / "sandboxes"), FakeClock()
    interpreter = Interpreter(driver, clock) if code else None
    store = SqliteMetaStore(tmp_path / "meta.db")
    await store.open()
    objects = LocalObjectStore(tmp_path / "objects")
    snapshots = Snapshots(objects, clock)
    quota: list[int | None] = [None]
    keeper = WorkspaceKeeper(driver, snapshots, store, clock, quota_bytes=lambda _: quota[0])
    service = SandboxService(
        driver, clock, max_sandboxes=max_sandboxes, pids_max=64, stop_grace_s=0.1, interpreter=interpreter
    )
    pauses = SandboxPauses(service, driver, snapshots, store, keeper, clock, retention_s=RETENTION_S)
    async with running(service):
        yield World(service, pauses, driver, clock, store, keeper, snapshots, tmp_path / "objects", quota)
    if interpreter is not None:
        await interpreter.aclose()
    await driver.aclose()
    await objects.aclose()
    await store.aclose()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with built_world(tmp_path) as built:
        yield built


async def write(world: World, sandbox_id: str, path: str, data: bytes) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    await world.driver.files(sandbox_id).write(path, chunks())


async def read(world: World, sandbox_id: str, path: str) -> bytes:
    return b"".join([c async for c in world.driver.files(sandbox_id).read(path)])


async def test_pause_keeps_the_record_and_resume_restores_it(world: World) -> None:
    sandbox = await world.service.create(SandboxCreate(metadata={"k": "v"}, timeout_s=100))
    await write(world, sandbox.id, "/home/user/a.txt", b"files")
    paused = await world.pauses.pause(sandbox.id)
    assert (paused.sandbox.state, paused.sandbox.expires_at) == ("paused", world.clock.now() + RETENTION_S)
    with pytest.raises(NotFound):
        world.service.get(sandbox.id)  # no instance
    assert [s.id for s in world.pauses.find({"k": "v"})] == [sandbox.id]
    assert world.pauses.find({"k": "v"}, "running") == []
    with pytest.raises(Conflict, match="already paused"):
        await world.pauses.pause(sandbox.id)
    world.clock.advance(50)
    resumed = await world.pauses.resume(sandbox.id, 30)
    assert (resumed.id, resumed.expires_at, resumed.request.metadata) == (
        sandbox.id,
        world.clock.now() + 30,
        {"k": "v"},
    )
    assert await read(world, sandbox.id, "/home/user/a.txt") == b"files"
    assert await world.store.paused_sandboxes() == [] and await world.store.workspaces(None) == []
    with pytest.raises(Conflict, match="is running, not paused"):
        await world.pauses.resume(sandbox.id)


async def test_paused_sandboxes_are_deleted_after_their_retention(world: World) -> None:
    sandbox = await world.service.create(SandboxCreate())
    await world.pauses.pause(sandbox.id)
    assert [r.path for r in await world.store.workspaces(None)] == [f"default/_sandboxes/{sandbox.id}"]
    assert await world.pauses.expire_once(world.clock.now() + RETENTION_S - 1) == []
    assert await world.pauses.expire_once(world.clock.now() + RETENTION_S) == [sandbox.id]
    assert await world.store.paused_sandboxes() == [] and await world.store.workspaces(None) == []
    assert not (world.objects / "default" / "_sandboxes" / sandbox.id).exists()
    with pytest.raises(NotFound):
        world.pauses.get(sandbox.id)


async def test_the_storage_quota_refuses_a_pause_and_the_sandbox_keeps_running(world: World) -> None:
    first, second = [await world.service.create(SandboxCreate()) for _ in range(2)]
    await write(world, first.id, "/home/user/f", b"x" * 1000)
    await world.pauses.pause(first.id)
    world.quota[0] = 1
    with pytest.raises(QuotaExceeded, match="cannot be paused"):
        await world.pauses.pause(second.id)
    assert world.service.running(second.id).state == "running"


async def test_on_timeout_pause_pauses_at_the_deadline_and_kill_still_kills(world: World) -> None:
    pausing = await world.service.create(SandboxCreate(timeout_s=10, on_timeout="pause"))
    killed = await world.service.create(SandboxCreate(timeout_s=10))
    world.clock.advance(11)
    assert sorted(await world.service.expire_once(world.clock.now())) == sorted([pausing.id, killed.id])
    assert world.pauses.get(pausing.id).state == "paused"
    with pytest.raises(NotFound):
        world.pauses.get(killed.id)


async def test_paused_sandboxes_are_reloaded_and_their_workspace_cannot_be_deleted(world: World) -> None:
    sandbox = await world.service.create(SandboxCreate(env={"A": "1"}))
    await world.pauses.pause(sandbox.id)
    restarted = world.new_pauses()
    assert await restarted.load() == 1
    found = restarted.get(sandbox.id)
    assert (found.state, found.request.env) == ("paused", {"A": "1"})
    with pytest.raises(Conflict, match=f"files of paused sandbox {sandbox.id}; resume it or kill it"):
        await world.keeper.delete(f"default/_sandboxes/{sandbox.id}")
    await restarted.kill(sandbox.id)
    await world.keeper.delete(f"default/_sandboxes/{sandbox.id}")  # no longer claimed


async def test_a_paused_sandboxs_files_are_held_before_its_workspace_row_is_written(world: World) -> None:
    """Between the pause's workspace row (which GET /v1/workspaces lists at once) and the paused
    sandbox's record, the workspaces API cannot delete its files: it could, from under the pause,
    and the sandbox was then paused without them."""
    sandbox = await world.service.create(SandboxCreate())
    await write(world, sandbox.id, "/home/user/kept.txt", b"kept")
    parked, go = asyncio.Event(), asyncio.Event()
    put_paused_sandbox = world.store.put_paused_sandbox

    async def held(record: PausedSandboxRecord) -> None:
        parked.set()
        await go.wait()
        await put_paused_sandbox(record)

    world.store.put_paused_sandbox = held  # type: ignore[method-assign]
    pausing = asyncio.create_task(world.pauses.pause(sandbox.id))
    await parked.wait()
    [row] = await world.store.workspaces(None)
    try:
        with pytest.raises(Conflict, match=f"files of paused sandbox {sandbox.id}; resume it or kill it"):
            await world.keeper.delete(row.path)
    finally:
        go.set()
        await pausing
    await world.pauses.resume(sandbox.id)
    assert await read(world, sandbox.id, "/home/user/kept.txt") == b"kept"


async def test_a_missing_snapshot_fails_the_resume_and_the_sandbox_stays_paused(world: World) -> None:
    sandbox = await world.service.create(SandboxCreate())
    await world.pauses.pause(sandbox.id)
    await world.snapshots.delete_all(f"default/_sandboxes/{sandbox.id}")
    with pytest.raises(WorkspaceCorrupt, match="missing from object storage"):
        await world.pauses.resume(sandbox.id)
    assert world.pauses.get(sandbox.id).state == "paused"
    with pytest.raises(NotFound):
        world.service.get(sandbox.id)  # the instance started for the resume was stopped
    await world.pauses.kill(sandbox.id)
    assert await world.store.paused_sandboxes() == []


async def test_metrics_keep_a_ring_per_run_of_a_sandbox(world: World) -> None:
    metrics = SandboxMetrics(world.service, world.driver, world.clock, keep=2)
    sandbox = await world.service.create(SandboxCreate(memory_mb=256))
    for _ in range(3):
        world.clock.advance(1)
        samples = await metrics.sample(sandbox.id)
    assert [s.at for s in samples] == [world.clock.now() - 1, world.clock.now()]
    assert (samples[-1].memory_total_bytes, samples[-1].cpu_count) == (256 << 20, 1)
    await world.pauses.pause(sandbox.id)
    await world.pauses.resume(sandbox.id)
    assert len(await metrics.sample(sandbox.id)) == 1  # a new run starts a new series


def test_cpu_percent_is_of_the_quota() -> None:
    assert _cpu_pct(500_000_000, 1.0, 1.0) == 50.0
    assert _cpu_pct(500_000_000, 1.0, 0.5) == 100.0
    assert _cpu_pct(1, 0.0, 1.0) == 0.0


async def test_another_tenant_sees_no_paused_sandbox(world: World) -> None:
    sandbox = await world.service.create(SandboxCreate())
    await world.pauses.pause(sandbox.id)
    with acting_as(Principal("acme", "k1", frozenset({"*"}))):
        assert world.pauses.find({}) == [] and world.pauses.paused(sandbox.id) is None
        for call in (world.pauses.resume, world.pauses.kill, world.pauses.pause):
            with pytest.raises(NotFound):
                await call(sandbox.id)
    assert world.pauses.get(sandbox.id).state == "paused"


def store_switch(world: World) -> SwitchedStore:
    """The object store under the world's snapshots, made switchable (off: like S3 unreachable)."""
    switch = SwitchedStore(world.snapshots._store)
    world.snapshots._store = switch
    return switch


async def test_a_pause_snapshots_the_sandbox_frozen(world: World) -> None:
    """A process rewriting a file in place cannot tear the paused copy: its processes stand
    still from before the snapshot until the instance stops."""
    sandbox = await world.service.create(SandboxCreate())
    frozen_while_saving: list[bool] = []
    persist = world.snapshots.persist

    async def watched(*args: Any, **kwargs: Any) -> Any:
        frozen_while_saving.append(sandbox.id in world.driver.frozen)
        return await persist(*args, **kwargs)

    world.snapshots.persist = watched  # type: ignore[method-assign]
    await world.pauses.pause(sandbox.id)
    assert frozen_while_saving == [True]


async def test_a_pause_that_cannot_save_thaws_the_sandbox_and_keeps_it_running(world: World) -> None:
    sandbox = await world.service.create(SandboxCreate())
    store_switch(world).down = True
    with pytest.raises(Unavailable, match="unreachable"):
        await world.pauses.pause(sandbox.id)
    assert world.service.running(sandbox.id).state == "running"
    assert world.driver.frozen == set()


async def test_an_unreachable_store_fails_a_resume_as_unavailable_and_it_stays_paused(world: World) -> None:
    sandbox = await world.service.create(SandboxCreate())
    await write(world, sandbox.id, "/home/user/a.txt", b"files")
    await world.pauses.pause(sandbox.id)
    switch = store_switch(world)
    switch.down = True
    with pytest.raises(Unavailable, match="stays paused") as caught:
        await world.pauses.resume(sandbox.id)
    assert not isinstance(caught.value, WorkspaceCorrupt) and caught.value.retry_after_s
    assert world.pauses.get(sandbox.id).state == "paused"
    switch.down = False
    await world.pauses.resume(sandbox.id)
    assert await read(world, sandbox.id, "/home/user/a.txt") == b"files"


async def test_a_pause_at_the_timeout_that_fails_keeps_the_sandbox_and_tries_again(world: World) -> None:
    """Store down at the deadline of an on_timeout=pause sandbox: it keeps running (it used to be
    killed with its files), and a later try pauses it; a bounded number of tries."""
    pauses = SandboxPauses(
        world.service,
        world.driver,
        world.snapshots,
        world.store,
        world.keeper,
        world.clock,
        timeout_pause_attempts=2,
        timeout_pause_retry_s=10,
    )
    kept = await world.service.create(SandboxCreate(timeout_s=10, on_timeout="pause"))
    await write(world, kept.id, "/home/user/a.txt", b"files")
    switch = store_switch(world)
    switch.down = True
    world.clock.advance(11)
    await world.service.expire_once(world.clock.now())
    assert world.service.running(kept.id).expires_at == world.clock.now() + 10
    switch.down = False
    world.clock.advance(10)
    await world.service.expire_once(world.clock.now())
    assert pauses.get(kept.id).state == "paused"
    await pauses.resume(kept.id)
    assert await read(world, kept.id, "/home/user/a.txt") == b"files"
    lost = await world.service.create(SandboxCreate(timeout_s=10, on_timeout="pause"))
    switch.down = True
    for _ in range(2):
        world.clock.advance(world.service.running(lost.id).expires_at - world.clock.now())
        await world.service.expire_once(world.clock.now())
    with pytest.raises(NotFound):
        pauses.get(lost.id)  # the attempts are spent: killed (and logged as a loss)
