"""Saves killed half-way (a SIGKILL of the server mid-pause or mid-save) leave no objects behind
for ever: the mark written before the first upload lets the next start of the same node sweep
what they uploaded, and never anything else — not a finished snapshot, not a paused sandbox's,
not a live session's, not a prefix another node writes. FakeDriver, a real local object store
whose puts can hang (the test then cancels the save, as the kill ends it), SQLite, a FakeClock;
a restart is a new keeper (a new run) on the same stores."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentcell.protocol.functions import FunctionConfig
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.server.clock import FakeClock
from agentcell.server.meta.records import PausedSandboxRecord, UnfinishedSaveRecord
from agentcell.server.meta.sqlite import SqliteMetaStore
from agentcell.server.sandbox.driver import SANDBOX_HOME
from agentcell.server.sandbox.fake import FakeDriver
from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.sandboxes import SandboxService
from agentcell.server.scheduler.workspaces import Workspace, WorkspaceKeeper
from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.snapshots import Snapshots
from tests.service_loop import running

NODE = "node-a"
MiB = 1 << 20
CONFIG = FunctionConfig(cmd="true", workspace={"persist": True})


def is_manifest(key: str) -> bool:
    return "/snapshots/" in key


def nth_blob(n: int) -> Callable[[str], bool]:
    seen = 0

    def matches(key: str) -> bool:
        nonlocal seen
        seen += "/blobs/" in key
        return seen == n

    return matches


class KillableStore(LocalObjectStore):
    """A local store in which the server 'dies' at one put: the put of the first key that `at`
    matches never returns (before storing it, or after with `after`) and `reached` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.at: Callable[[str], bool] | None = None
        self.after = False
        self.reached = asyncio.Event()

    async def put(self, key: str, data: bytes) -> None:
        hit = self.at is not None and self.at(key)
        if hit and not self.after:
            await self._die()
        await super().put(key, data)
        if hit:
            await self._die()

    async def _die(self) -> None:
        self.at = None
        self.reached.set()
        await asyncio.Event().wait()  # until cancelled


@dataclass
class World:
    tmp: Path
    driver: FakeDriver
    clock: FakeClock
    store: SqliteMetaStore
    objects: KillableStore
    service: SandboxService
    keeper: WorkspaceKeeper
    pauses: SandboxPauses

    def restarted(self, node: str = NODE) -> tuple[WorkspaceKeeper, SandboxPauses]:
        """The keeper and paused sandboxes of the same node started again (a new run)."""
        snapshots = Snapshots(LocalObjectStore(self.objects.root), self.clock)
        keeper = WorkspaceKeeper(
            self.driver, snapshots, self.store, self.clock, quota_bytes=no_quota, node=node
        )
        return keeper, SandboxPauses(self.service, self.driver, snapshots, self.store, keeper, self.clock)

    def files_under(self, path: str) -> dict[str, bytes]:
        root = self.objects.root / path
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def no_quota(_: str) -> int | None:
    return None


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    driver, clock = FakeDriver(tmp_path / "sandboxes"), FakeClock()
    store = SqliteMetaStore(tmp_path / "meta.db")
    await store.open()
    objects = KillableStore(tmp_path / "objects")
    snapshots = Snapshots(objects, clock)
    keeper = WorkspaceKeeper(driver, snapshots, store, clock, quota_bytes=no_quota, node=NODE)
    service = SandboxService(driver, clock, max_sandboxes=8, pids_max=64, stop_grace_s=0.1)
    pauses = SandboxPauses(service, driver, snapshots, store, keeper, clock)
    async with running(service):
        yield World(tmp_path, driver, clock, store, objects, service, keeper, pauses)
    await driver.aclose()
    await store.aclose()


async def filled_sandbox(world: World) -> str:
    """A running sandbox holding one random file of 9 MiB (stored as three chunk blobs)."""
    sandbox = await world.service.create(SandboxCreate())
    await fill(world, sandbox.id, "big.bin", 9)
    return sandbox.id


async def fill(world: World, sandbox_id: str, name: str, mib: int) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield os.urandom(mib * MiB)

    await world.driver.files(sandbox_id).write(f"{SANDBOX_HOME}/{name}", chunks())


async def killed(
    world: World, save: Coroutine[Any, Any, Any], at: Callable[[str], bool], *, after: bool
) -> None:
    """Run `save` until the store reaches the put `at` matches, then end it there (the kill)."""
    world.objects.at, world.objects.after = at, after
    world.objects.reached.clear()
    task = asyncio.create_task(save)
    await asyncio.wait_for(world.objects.reached.wait(), 30)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def persist_unmarked(world: World, sandbox_id: str, path: str) -> None:
    """A persist of the sandbox's home under `path` that marks nothing (as another node's would)."""
    fd = await world.driver.files(sandbox_id).open_dir(SANDBOX_HOME)
    try:
        await world.keeper._snapshots.persist(path, fd)
    finally:
        os.close(fd)


def session_workspace(key: str) -> Workspace:
    return Workspace(f"default/fn/{key}", SANDBOX_HOME, "default", "fn", key, 64 * MiB)


def pause_mark(path: str, node: str = NODE) -> UnfinishedSaveRecord:
    """The mark of a pause, left by an earlier run of `node`."""
    return UnfinishedSaveRecord(
        path, node, "r0", "default", "_sandboxes", path.rsplit("/", 1)[1], "pause", 0.0
    )


async def big_bin(world: World, sandbox_id: str) -> bytes:
    return b"".join([c async for c in world.driver.files(sandbox_id).read(f"{SANDBOX_HOME}/big.bin")])


async def test_a_pause_killed_mid_upload_is_swept_and_nothing_else_is(world: World) -> None:
    """The reported leak: blobs of a pause whose server died stay under `_sandboxes/<id>` with
    no row. The next start deletes them, and leaves a finished pause, a prefix that another node
    marked and a prefix nobody marked exactly as they were."""
    done = await filled_sandbox(world)
    await world.pauses.pause(done)
    done_path = f"default/_sandboxes/{done}"
    lost = await filled_sandbox(world)
    lost_path = f"default/_sandboxes/{lost}"
    await killed(world, world.pauses.pause(lost), nth_blob(2), after=False)
    assert len(world.files_under(f"{lost_path}/blobs")) == 1  # uploaded, then the server died
    others = [await filled_sandbox(world) for _ in range(2)]
    for other in others:  # interrupted alike, but not marked by this node
        await killed(
            world, persist_unmarked(world, other, f"default/_sandboxes/{other}"), is_manifest, after=False
        )
    await world.store.put_unfinished_save(pause_mark(f"default/_sandboxes/{others[0]}", node="node-b"))
    before = {p: world.files_under(f"default/_sandboxes/{p}") for p in (done, *others)}
    assert all(before.values())

    keeper, pauses = world.restarted()
    assert await pauses.load() == 1
    assert await keeper.sweep_unfinished() == [lost_path]
    assert not (world.objects.root / lost_path).exists()
    assert {p: world.files_under(f"default/_sandboxes/{p}") for p in (done, *others)} == before
    assert [r.path for r in await world.store.workspaces(None)] == [done_path]
    assert [m.path for m in await world.store.unfinished_saves("node-b")] == [
        f"default/_sandboxes/{others[0]}"
    ]
    assert await world.store.unfinished_saves(NODE) == []
    assert len(await big_bin(world, (await pauses.resume(done)).id)) == 9 * MiB


async def test_a_pause_whose_record_was_written_is_never_swept(world: World) -> None:
    """Killed after the paused sandbox's record but before its mark went: the pause finished,
    so the next start only drops the mark; the sandbox resumes with its files."""
    sandbox_id = await filled_sandbox(world)
    await world.pauses.pause(sandbox_id)
    path = f"default/_sandboxes/{sandbox_id}"
    await world.store.put_unfinished_save(pause_mark(path))
    before = world.files_under(path)
    keeper, pauses = world.restarted()
    await pauses.load()
    assert await keeper.sweep_unfinished() == [path]
    assert world.files_under(path) == before and await world.store.unfinished_saves(NODE) == []
    assert len(await big_bin(world, (await pauses.resume(sandbox_id)).id)) == 9 * MiB


async def test_a_pause_killed_between_its_row_and_its_record_leaves_neither(world: World) -> None:
    """The snapshot and its workspace row were written, the paused sandbox's record was not: the
    sandbox ended with the server (as running sandboxes do), so nothing of it may stay half-paused:
    the next start deletes the snapshot and the row."""
    sandbox_id = await filled_sandbox(world)
    path = f"default/_sandboxes/{sandbox_id}"
    reached = asyncio.Event()

    async def dies(record: PausedSandboxRecord) -> None:
        reached.set()
        await asyncio.Event().wait()

    world.store.put_paused_sandbox = dies  # type: ignore[method-assign]
    pausing = asyncio.create_task(world.pauses.pause(sandbox_id))
    await asyncio.wait_for(reached.wait(), 30)
    pausing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pausing
    assert [r.path for r in await world.store.workspaces(None)] == [path]
    keeper, pauses = world.restarted()
    assert await pauses.load() == 0
    assert await keeper.sweep_unfinished() == [path]
    assert not (world.objects.root / path).exists() and await world.store.workspaces(None) == []


async def test_a_first_session_save_killed_before_its_manifest_is_swept(world: World) -> None:
    sandbox_id = await filled_sandbox(world)
    workspace = session_workspace("k")
    await killed(world, world.keeper.persist(sandbox_id, workspace, CONFIG), is_manifest, after=False)
    assert len(world.files_under("default/fn/k/blobs")) == 3
    keeper, _ = world.restarted()
    assert await keeper.sweep_unfinished() == ["default/fn/k"]
    assert not (world.objects.root / "default/fn/k").exists()
    assert await world.store.workspaces(None) == [] and await world.store.unfinished_saves(NODE) == []


async def test_a_session_save_killed_after_its_manifest_is_recorded_not_deleted(world: World) -> None:
    """The snapshot is whole (its manifest was written) but no row recorded it: it is the session's
    newest save, so the next start records it and the key restores it; nothing of it is deleted."""
    sandbox_id = await filled_sandbox(world)
    workspace = session_workspace("k")
    await killed(world, world.keeper.persist(sandbox_id, workspace, CONFIG), is_manifest, after=True)
    assert await world.store.get_workspace("default/fn/k") is None
    before = world.files_under("default/fn/k")
    keeper, _ = world.restarted()
    assert await keeper.sweep_unfinished() == ["default/fn/k"]
    assert world.files_under("default/fn/k") == before
    record = await world.store.get_workspace("default/fn/k")
    assert record is not None and (record.seq, record.function, record.key) == (1, "fn", "k")
    fresh = (await world.service.create(SandboxCreate())).id
    assert (await keeper.attach(fresh, workspace)) is not None
    assert await big_bin(world, fresh) == await big_bin(world, sandbox_id)


async def test_a_live_session_keeps_its_unfinished_save_for_its_next_save(world: World) -> None:
    """A session adopted after the restart (its instance lived on) holds the path: the sweep leaves
    the path and its mark alone, and the session's next save that finishes takes both."""
    sandbox_id = await filled_sandbox(world)
    workspace = session_workspace("k")
    await killed(world, world.keeper.persist(sandbox_id, workspace, CONFIG), is_manifest, after=False)
    keeper, _ = world.restarted()
    keeper.adopt(workspace, "ses_live")
    assert await keeper.sweep_unfinished() == []
    assert len(world.files_under("default/fn/k/blobs")) == 3
    assert len(await world.store.unfinished_saves(NODE)) == 1
    await keeper.persist(sandbox_id, workspace, CONFIG)
    assert await world.store.unfinished_saves(NODE) == []


async def test_a_failed_save_keeps_its_mark_until_a_later_one_finishes(world: World) -> None:
    """In one run: the mark of a save that failed stays (its own run never sweeps it), and the
    next save that finishes removes it, its collection having taken the leftovers. A workspace
    with a recorded snapshot is not marked: its next save collects whatever a failed one left."""
    sandbox_id = await filled_sandbox(world)
    workspace = session_workspace("k")
    await killed(world, world.keeper.persist(sandbox_id, workspace, CONFIG), is_manifest, after=False)
    assert [m.kind for m in await world.store.unfinished_saves(NODE)] == ["session"]
    assert await world.keeper.sweep_unfinished() == []
    await world.keeper.persist(sandbox_id, workspace, CONFIG)
    assert await world.store.unfinished_saves(NODE) == []
    await fill(world, sandbox_id, "more.bin", 5)
    save = world.keeper.persist(sandbox_id, workspace, CONFIG)
    await killed(world, save, is_manifest, after=False)
    assert await world.store.unfinished_saves(NODE) == []
    assert len(world.files_under("default/fn/k/blobs")) == 5  # 3 kept, 2 left by the failed save
    await world.keeper.persist(sandbox_id, workspace, CONFIG)
    assert len(world.files_under("default/fn/k/blobs")) == 5  # the same content, now referenced
