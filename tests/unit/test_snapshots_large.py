"""Large workspaces do not take the server: persists, restores and listings of one with many files
leave the event loop serving (their work over all entries runs in threads, the manifest's JSON is
made and parsed a slice at a time, the GC's full collections wait), and at most `max_jobs` of them
run at once on a node."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agentcell.server.clock import FakeClock, SystemClock
from agentcell.server.storage import manifest
from agentcell.server.storage.full_gc import HELD_MAX_S, FullGcHold
from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.snapshots import Snapshots
from tests.unit.snapshot_helpers import dir_fd, tree, write

T = TypeVar("T")
FILES = 4_000


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"entries":[[1,"x",[]],[2,"y",[[3]]]],"b":{"k":[1,2]},"c":[],"d":"s"}',
        ' \n{ "a" : [ 1 , 2 ] ,\t"b":null , "c":[ ] }\r\n',
        "{}",
        '{"dup":1,"dup":[2]}',
        "[1,2]",
    ],
)
def test_manifest_json_parses_as_json_loads(text: str) -> None:
    assert manifest._loads(text) == json.loads(text)


@pytest.mark.parametrize(
    "text",
    ['{"a":[1,2}', '{"a":1,}', '{"a":1} x', '{"a" 1}', "{1:2}", '{"a":[1 2]}', '{"a":[1,]}', "{"],
)
def test_manifest_json_refuses_what_json_loads_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        manifest._loads(text)


def test_manifest_json_is_dumped_as_json_dumps() -> None:
    items = list(range(manifest.SLICE * 2 + 7))
    body: dict[str, Any] = {"a": 1, "items": manifest._Sliced(items, str), "empty": manifest._Sliced([], str)}
    plain = {"a": 1, "items": [str(item) for item in items], "empty": []}
    assert manifest._dumps(body) == json.dumps(plain, separators=(",", ":"))


async def _loop_share(work: Awaitable[T]) -> tuple[T, float, float]:
    """(result, the most CPU the event loop's thread spent between two turns of a 1 ms ticker,
    the process's CPU time for the work). CPU, not wall time: a machine busy with other work
    delays the ticker without the loop's thread doing anything."""
    longest = 0.0
    done = False

    async def tick() -> None:
        nonlocal longest
        while not done:
            started = time.thread_time()
            await asyncio.sleep(0.001)
            longest = max(longest, time.thread_time() - started)

    ticker = asyncio.ensure_future(tick())
    started = time.process_time()
    try:
        result = await work
    finally:
        done = True
        await ticker
    return result, longest, time.process_time() - started


def test_a_large_workspace_leaves_the_event_loop_serving(tmp_path: Path) -> None:
    workspace, restored = tmp_path / "ws", tmp_path / "restored"
    restored.mkdir()
    for index in range(FILES):
        write(workspace, f"d{index // 500}/file-{index}.txt", b"x" * (index % 64))
    snapshots = Snapshots(LocalObjectStore(tmp_path / "store"), SystemClock())

    async def scenario() -> list[tuple[str, float, float]]:
        seen = []
        with dir_fd(workspace) as fd, dir_fd(restored) as into:
            await snapshots.persist("t/ws", fd)
            write(workspace, "d0/file-0.txt", b"changed")
            for what, work in (
                ("an incremental persist", snapshots.persist("t/ws", fd)),
                ("a listing", snapshots.list("t/ws")),
                ("a restore", snapshots.restore("t/ws", into)),
            ):
                _, longest, took = await _loop_share(work)
                seen.append((what, longest, took))
        return seen

    seen = asyncio.run(scenario())
    for what, longest, took in seen:
        # Before, each held the loop for a fifth or more of its CPU time in one piece (the manifest's
        # JSON, the plan over all entries, full collections of the GC walking all of them); now
        # the longest gap is a GIL switch or a slice.
        assert longest < took / 10, f"{what} held the event loop for {longest:.3f} s of {took:.3f} s of CPU"
    assert tree(restored) == tree(workspace)


class _WatchedStore(LocalObjectStore):
    """Counts the prefixes with a put in progress (each put takes a little while)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.busy: dict[str, int] = {}
        self.most_at_once = 0

    async def put(self, key: str, data: bytes) -> None:
        prefix = key.split("/snapshots/")[0].split("/packs/")[0]
        self.busy[prefix] = self.busy.get(prefix, 0) + 1
        self.most_at_once = max(self.most_at_once, len(self.busy))
        try:
            await asyncio.sleep(0.02)
            await super().put(key, data)
        finally:
            self.busy[prefix] -= 1
            if not self.busy[prefix]:
                del self.busy[prefix]


@pytest.mark.parametrize("max_jobs", [1, 2])
def test_persists_of_a_node_run_at_most_max_jobs_at_once(tmp_path: Path, max_jobs: int) -> None:
    workspaces = [tmp_path / f"ws{index}" for index in range(4)]
    for workspace in workspaces:
        for index in range(3):
            write(workspace, f"f{index}", b"y" * 70_000)  # not inline: a pack of its own
    store = _WatchedStore(tmp_path / "store")
    snapshots = Snapshots(store, SystemClock(), max_jobs=max_jobs)

    async def persist(index: int) -> None:
        with dir_fd(workspaces[index]) as fd:
            await snapshots.persist(f"t/ws{index}", fd)

    async def all_at_once() -> None:
        await asyncio.gather(*(persist(index) for index in range(len(workspaces))))

    asyncio.run(all_at_once())
    assert store.most_at_once == max_jobs
    assert all(len(asyncio.run(snapshots.list(f"t/ws{index}"))) == 1 for index in range(4))


def test_full_collections_wait_while_jobs_run_and_at_most_held_max_s() -> None:
    clock = FakeClock()
    hold = FullGcHold(clock)
    before = gc.get_threshold()
    full: list[float] = []

    def count_full(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(clock.now())

    gc.callbacks.append(count_full)
    try:
        with hold.held():
            assert gc.get_threshold()[:2] == before[:2] and gc.get_threshold()[2] > before[2]
            clock.advance(HELD_MAX_S / 2)
            with hold.held():  # overlapping jobs: one hold
                pass
            assert gc.get_threshold()[2] > before[2] and not full
            clock.advance(HELD_MAX_S)
            with hold.held():  # held too long: this job lets one full collection through first
                assert len(full) == 1
            assert gc.get_threshold()[2] > before[2]
        assert gc.get_threshold() == before
    finally:
        gc.callbacks.remove(count_full)
        gc.set_threshold(*before)
