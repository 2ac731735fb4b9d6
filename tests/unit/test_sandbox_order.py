"""The order of sandbox lists and their pages (SandboxOrder, `SandboxPauses.find_page`), on the
FakeDriver with pauses over a local object store and a FakeClock: oldest first, ids breaking ties;
a page goes on from the last of the page before even when that one has ended; paused, resumed and
reloaded sandboxes keep their place, one being resumed is listed once and one stopping as stopping;
filters and tenants apply all along a walk."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentcell.protocol.sandboxes import SandboxCreate, SandboxState
from agentcell.server.auth.principal import Principal, acting_as
from agentcell.server.scheduler.sandbox_order import SandboxOrder, order_key
from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.sandboxes import Sandbox
from tests.unit.test_sandbox_pause import World, built_world


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with built_world(tmp_path, max_sandboxes=8) as built:
        yield built


@dataclass
class Item:
    id: str
    created_at: float


def walk(
    pauses: SandboxPauses,
    limit: int,
    metadata: dict[str, str] | None = None,
    state: SandboxState | None = None,
) -> list[list[str]]:
    """Every page's ids, each page asked for after the last of the one before (as `next_token`)."""
    pages: list[list[str]] = []
    after = None
    while True:
        page, more = pauses.find_page(metadata or {}, state, limit, after)
        pages.append([s.id for s in page])
        assert len(pages) <= 10, f"the pages do not end: {pages}"
        if not more:
            return pages
        after = order_key(page[-1])


async def create(world: World, **metadata: str) -> Sandbox:
    """A sandbox a second younger than the one before."""
    world.clock.advance(1)
    return await world.service.create(SandboxCreate(metadata=metadata))


def tenant(name: str) -> contextlib.AbstractContextManager[None]:
    return acting_as(Principal(name, "k1", frozenset({"*"})))


def test_an_order_goes_on_after_a_key_that_has_left() -> None:
    """Ties of created_at go by id, and a walk from a key no longer in resumes at the next."""
    order: SandboxOrder[Item] = SandboxOrder()
    a, b, c, d = Item("a", 1.0), Item("b", 2.0), Item("c", 2.0), Item("d", 3.0)
    for item in (d, b, a, c):
        order.add(item)
    assert [i.id for i in order.after(None)] == ["a", "b", "c", "d"]
    order.discard(b)
    assert [i.id for i in order.after(order_key(b))] == ["c", "d"]
    assert [i.id for i in order.after(order_key(c))] == ["d"]
    assert [i.id for i in order.after(order_key(d))] == []


def test_an_order_holds_a_sandbox_once_and_discards_only_what_is_in() -> None:
    order: SandboxOrder[Item] = SandboxOrder()
    a, b, c = Item("a", 1.0), Item("b", 1.0), Item("c", 1.0)
    order.add(a)
    order.add(c)
    order.add(a)
    order.discard(b)  # its place is c's
    assert [i.id for i in order.after(None)] == ["a", "c"]
    order.discard(a)
    order.discard(c)
    assert len(order) == 0


async def test_sandboxes_created_at_the_same_time_are_listed_by_id(world: World) -> None:
    """The fake clock stands still: every created_at is equal, so only the id orders them."""
    made = [(await world.service.create(SandboxCreate())).id for _ in range(4)]
    assert walk(world.pauses, 1) == [[i] for i in sorted(made)]
    assert [s.id for s in world.pauses.find({})] == sorted(made)


async def test_a_sandbox_ended_between_pages_neither_shifts_nor_repeats_the_next(world: World) -> None:
    a, b, c, d = [await create(world) for _ in range(4)]
    first, more = world.pauses.find_page({}, None, 2, None)
    assert ([s.id for s in first], more) == ([a.id, b.id], True)
    await world.pauses.kill(b.id)  # the last of the page: its token still places the next
    await world.pauses.kill(c.id)  # the first of the next
    e = await create(world)
    second, more = world.pauses.find_page({}, None, 2, order_key(first[-1]))
    assert ([s.id for s in second], more) == ([d.id, e.id], False)
    assert walk(world.pauses, 100) == [[a.id, d.id, e.id]]


async def test_paused_and_resumed_sandboxes_keep_their_place(world: World) -> None:
    a, b, c = [await create(world) for _ in range(3)]
    first, _ = world.pauses.find_page({}, None, 2, None)
    await world.pauses.pause(b.id)
    world.clock.advance(60)
    assert world.pauses.find_page({}, None, 2, order_key(first[-1])) == ([c], False)
    assert walk(world.pauses, 1) == [[a.id], [b.id], [c.id]]
    assert [s.state for s in world.pauses.find({})] == ["running", "paused", "running"]
    assert walk(world.pauses, 1, state="paused") == [[b.id]]
    assert walk(world.pauses, 1, state="running") == [[a.id], [c.id]]
    await world.pauses.resume(b.id)
    assert walk(world.pauses, 1) == [[a.id], [b.id], [c.id]]
    assert [s.state for s in world.pauses.find({})] == ["running"] * 3
    assert walk(world.pauses, 1, state="paused") == [[]]
    await world.pauses.kill(b.id)
    assert walk(world.pauses, 1) == [[a.id], [c.id]]


async def test_paused_sandboxes_reloaded_after_a_restart_keep_their_place(world: World) -> None:
    a, b, c = [await create(world) for _ in range(3)]
    await world.pauses.pause(b.id)
    restarted = world.new_pauses()
    await restarted.load()
    assert walk(restarted, 2) == [[a.id, b.id], [c.id]]
    assert [s.state for s in restarted.find({})] == ["running", "paused", "running"]


async def test_a_sandbox_stopping_is_listed_as_stopping_not_as_running(world: World) -> None:
    a, b = await create(world), await create(world)
    stopping, release = asyncio.Event(), asyncio.Event()
    stop = world.driver.stop

    async def held(*args: Any, **kwargs: Any) -> None:
        stopping.set()
        await release.wait()
        await stop(*args, **kwargs)

    world.driver.stop = held  # type: ignore[method-assign]
    killing = asyncio.create_task(world.pauses.kill(a.id))
    await stopping.wait()
    try:
        assert [(s.id, s.state) for s in world.pauses.find({})] == [(a.id, "stopping"), (b.id, "running")]
        assert walk(world.pauses, 1, state="running") == [[b.id]]
    finally:
        release.set()
        await killing
    assert walk(world.pauses, 1) == [[b.id]]


@contextlib.asynccontextmanager
async def resume_held_while_restoring(world: World, sandbox_id: str) -> AsyncIterator[None]:
    """A resume of the sandbox, held while it restores its files into its new instance."""
    restoring, release = asyncio.Event(), asyncio.Event()
    restore = world.snapshots.restore

    async def held(*args: Any, **kwargs: Any) -> Any:
        restoring.set()
        await release.wait()
        return await restore(*args, **kwargs)

    world.snapshots.restore = held  # type: ignore[method-assign]
    resuming = asyncio.create_task(world.pauses.resume(sandbox_id))
    await restoring.wait()
    try:
        yield
    finally:
        release.set()
        await resuming


async def test_a_sandbox_being_resumed_is_listed_once_as_paused(world: World) -> None:
    """While its files are restored it runs again and is still paused: one entry, as paused."""
    a, b = await create(world), await create(world)
    await world.pauses.pause(a.id)
    async with resume_held_while_restoring(world, a.id):
        assert world.service.get(a.id).state == "running"
        assert [(s.id, s.state) for s in world.pauses.find({})] == [(a.id, "paused"), (b.id, "running")]
        assert walk(world.pauses, 1) == [[a.id], [b.id]]
        assert walk(world.pauses, 1, state="running") == [[b.id]]
    assert walk(world.pauses, 1, state="running") == [[a.id], [b.id]]


async def test_filters_and_tenants_apply_all_along_a_walk(world: World) -> None:
    """Two tenants' sandboxes interleaved in time, some paused: each page holds only what the
    caller may see and asked for, and the pages end where the matches do."""
    d1 = await create(world, tag="x")
    with tenant("acme"):
        a1 = await create(world, tag="x")
    d2, d3 = await create(world, tag="y"), await create(world, tag="x")
    with tenant("acme"):
        a2 = await create(world, tag="x")
    d4 = await create(world, tag="x")
    await world.pauses.pause(d2.id)
    await world.pauses.pause(d3.id)
    with tenant("default"):
        assert walk(world.pauses, 2) == [[d1.id, d2.id], [d3.id, d4.id]]
        assert walk(world.pauses, 1, {"tag": "x"}) == [[d1.id], [d3.id], [d4.id]]
        assert walk(world.pauses, 1, {"tag": "x"}, "running") == [[d1.id], [d4.id]]
        assert walk(world.pauses, 1, {"tag": "x"}, "paused") == [[d3.id]]
        assert walk(world.pauses, 5, {"tag": "z"}) == [[]]
    with tenant("acme"):
        assert walk(world.pauses, 1, {"tag": "x"}) == [[a1.id], [a2.id]]
        assert walk(world.pauses, 1, state="paused") == [[]]
    assert walk(world.pauses, 2, {"tag": "x"}) == [[d1.id, a1.id], [d3.id, a2.id], [d4.id]]  # the server's
    assert [s.id for s in world.pauses.find({"tag": "x"})] == [d1.id, a1.id, d3.id, a2.id, d4.id]
