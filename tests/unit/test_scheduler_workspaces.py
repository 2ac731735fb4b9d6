"""Session workspaces in the scheduler, on the FakeDriver, a real local object store, SQLite and a
FakeClock: restore on a new instance, the `restoring` state, periodic and final snapshots, a
resuming key waiting for the last snapshot, damaged snapshots, named workspaces."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentcell.errors import Conflict, InvalidArgument, WorkspaceCorrupt
from agentcell.protocol.functions import FunctionConfig, Hook
from agentcell.protocol.sessions import SessionCreate
from agentcell.server.storage.objects import ObjectStore
from agentcell.server.storage.snapshots import SnapshotInfo, Snapshots
from tests.unit.test_scheduler import Harness

PERSIST = {"workspace": {"persist": True, "sync_interval_s": 0}}


class GatedSnapshots(Snapshots):
    """Real snapshots whose restores and persists wait for their gates (open by default)."""

    def __init__(self, store: ObjectStore, clock: Any) -> None:
        super().__init__(store, clock)
        self.restore_gate = asyncio.Event()
        self.persist_gate = asyncio.Event()
        self.restore_gate.set()
        self.persist_gate.set()
        self.persisted = 0

    async def restore(self, *args: Any, **kwargs: Any) -> SnapshotInfo | None:
        await self.restore_gate.wait()
        return await super().restore(*args, **kwargs)

    async def persist(self, *args: Any, **kwargs: Any) -> SnapshotInfo:
        await self.persist_gate.wait()
        self.persisted += 1
        return await super().persist(*args, **kwargs)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    harness.snapshots = GatedSnapshots(harness.objects, harness.clock)
    harness.workspaces._snapshots = harness.snapshots
    await harness.start()
    yield harness
    await harness.stop()
    await harness.driver.aclose()


async def _chunks(data: bytes) -> AsyncIterable[bytes]:
    yield data


async def write(h: Harness, instance_id: str, path: str, data: bytes) -> None:
    await h.driver.files(instance_id).write(path, _chunks(data))


async def read(h: Harness, instance_id: str, path: str) -> bytes:
    return b"".join([chunk async for chunk in h.driver.files(instance_id).read(path)])


async def deploy(h: Harness, archive: Path, **config: Any) -> None:
    await h.scheduler.deploy("echo", FunctionConfig(cmd="python3 app.py", **{**PERSIST, **config}), archive)


async def bound_instance(h: Harness, key: str) -> str:
    lease = await h.scheduler.route("echo", key)
    h.scheduler.release(lease)
    return lease.instance.id


def gated(h: Harness) -> GatedSnapshots:
    assert isinstance(h.snapshots, GatedSnapshots)
    return h.snapshots


async def end(h: Harness, key: str) -> None:
    session = h.scheduler.function("echo").sessions[key]
    await h.scheduler.delete_session(session.id)


async def test_files_come_back_on_a_new_instance(h: Harness, archive: Path) -> None:
    await deploy(h, archive)
    first = await bound_instance(h, "alice")
    await write(h, first, "notes/today.txt", b"remember the milk")
    await end(h, "alice")
    second = await bound_instance(h, "alice")
    assert second != first
    assert await read(h, second, "notes/today.txt") == b"remember the milk"
    record = await h.store.get_workspace("default/echo/alice")
    assert record is not None and record.seq == 1 and record.files >= 1


async def test_a_resuming_session_is_restoring_until_its_files_are_back(h: Harness, archive: Path) -> None:
    await deploy(h, archive)
    await write(h, await bound_instance(h, "k"), "a.txt", b"A")
    await end(h, "k")
    gated(h).restore_gate.clear()
    routing = asyncio.create_task(h.scheduler.route("echo", "k"))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if [s.state for s in h.scheduler.sessions("echo", None, {})] == ["restoring"]:
            break
    assert [s.state for s in h.scheduler.sessions("echo", None, {})] == ["restoring"]
    assert not routing.done()  # the request waits for the files
    gated(h).restore_gate.set()
    lease = await routing
    assert await read(h, lease.instance.id, "a.txt") == b"A"
    h.scheduler.release(lease)


async def test_a_resuming_key_waits_for_the_last_snapshot_of_its_previous_session(
    h: Harness, archive: Path
) -> None:
    await deploy(h, archive)
    await write(h, await bound_instance(h, "k"), "a.txt", b"last words")
    gated(h).persist_gate.clear()
    ending = asyncio.create_task(end(h, "k"))
    await asyncio.sleep(0.05)
    resuming = asyncio.create_task(bound_instance(h, "k"))
    await asyncio.sleep(0.1)
    assert not resuming.done(), "it must not restore before the ending session's snapshot is written"
    gated(h).persist_gate.set()
    await ending
    assert await read(h, await resuming, "a.txt") == b"last words"


async def test_periodic_snapshots_follow_the_sync_interval(h: Harness, archive: Path) -> None:
    await deploy(h, archive, workspace={"persist": True, "sync_interval_s": 60})
    await write(h, await bound_instance(h, "k"), "a.txt", b"A")
    assert h.scheduler.sync_once(h.clock.now()) == 0
    h.clock.advance(61)
    assert h.scheduler.sync_once(h.clock.now()) == 1
    assert h.scheduler.sync_once(h.clock.now()) == 0  # not twice for one interval
    for _ in range(100):
        if (record := await h.store.get_workspace("default/echo/k")) is not None:
            break
        await asyncio.sleep(0.01)
    assert record is not None and record.seq == 1


async def test_a_damaged_snapshot_ends_the_session_with_restore_failed(
    h: Harness, archive: Path, tmp_path: Path
) -> None:
    await deploy(h, archive)
    await write(h, await bound_instance(h, "k"), "a.txt", b"A" * 4096)
    await end(h, "k")
    for path in (tmp_path / "objects" / "default" / "echo" / "k").rglob("*"):
        if path.is_file():
            path.unlink()
    with pytest.raises(WorkspaceCorrupt, match="missing"):
        await h.scheduler.route("echo", "k")
    record = await h.store.get_workspace("default/echo/k")
    assert record is not None and record.error is not None and "missing" in record.error
    assert h.scheduler.function("echo").sessions == {}


async def test_shutdown_saves_every_live_workspace(h: Harness, archive: Path) -> None:
    await deploy(h, archive)
    await write(h, await bound_instance(h, "k"), "a.txt", b"A")
    await h.scheduler.aclose()
    record = await h.store.get_workspace("default/echo/k")
    assert record is not None and record.seq == 1


async def test_deleting_a_function_ends_its_sessions_like_deleting_them(h: Harness, archive: Path) -> None:
    """Each live session gets its pre-stop hook (reason function_deleted), its last snapshot and
    its usage row before the function goes: a redeploy under the same key finds the last write
    and what the hook left."""
    hook = Hook(cmd='echo "$AGENTCELL_END_REASON" > "$HOME/pre_stop.txt"')
    await deploy(h, archive, pre_stop=hook)
    started = h.clock.now()
    await write(h, await bound_instance(h, "k"), "a.txt", b"written just before the delete")
    h.clock.advance(30)
    await h.scheduler.delete_function("echo")
    await h.scheduler.meter_once(h.clock.now())
    rows = [r for r in await h.store.usage(None, 0, h.clock.now() + 1) if r.kind == "session"]
    assert [r.session_key for r in rows] == ["k"]
    assert rows[0].active_s + rows[0].idle_s == pytest.approx(h.clock.now() - started, abs=0.5)
    await deploy(h, archive)
    instance = await bound_instance(h, "k")
    assert await read(h, instance, "a.txt") == b"written just before the delete"
    assert await read(h, instance, "pre_stop.txt") == b"function_deleted\n"


async def test_named_workspaces_are_exclusive_and_need_persistence(h: Harness, archive: Path) -> None:
    await deploy(h, archive)
    first = await h.scheduler.create_session("echo", SessionCreate(key="a", workspace="shared-proj"))
    assert first.workspace is not None and first.workspace.storage_path == "default/_named/shared-proj"
    with pytest.raises(Conflict, match="in use"):
        await h.scheduler.create_session("echo", SessionCreate(key="b", workspace="shared-proj"))
    await h.scheduler.deploy("plain", FunctionConfig(cmd="python3 app.py"), archive)
    with pytest.raises(InvalidArgument, match="persist"):
        await h.scheduler.create_session("plain", SessionCreate(workspace="shared-proj"))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"cmd": "x", "affinity": {"kind": "mcp"}, "workspace": {"persist": True}},
            "affinity header or cookie",
        ),
        (
            {"cmd": "x", "affinity": {"kind": "none"}, "workspace": {"persist": True}},
            "affinity header or cookie",
        ),
        ({"cmd": "x", "workspace": {"persist": True, "keep": 0}}, "greater than or equal to 1"),
        ({"cmd": "x", "stdio": "y"}, "exactly one of cmd"),
        ({}, "exactly one of cmd"),
    ],
)
def test_function_configs_that_cannot_work_are_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FunctionConfig(**config)
