"""Metering reads every live sandbox's cgroup counters (four file reads each on Linux): on a node of
a thousand sandboxes, reading them all in one turn of the event loop held every request for 180 ms
once a minute. The reads now take turns with the rest of the loop's work, in the sandbox service
and in the scheduler (function instances) alike, and every row is still written once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from agentcell.protocol.functions import FunctionConfig
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.server.sandbox.driver import ResourceUsage
from agentcell.server.scheduler.metering import READS_PER_TURN, UsageLedger
from agentcell.server.scheduler.sandboxes import SandboxService
from tests.service_loop import running
from tests.unit.test_scheduler import Harness

SANDBOXES = 4 * READS_PER_TURN + 1


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Harness, SandboxService, list[str]]]:
    h = Harness(tmp_path)
    await h.start()
    ledger = UsageLedger(h.store)
    service = SandboxService(
        h.driver, h.clock, max_sandboxes=SANDBOXES, pids_max=64, stop_grace_s=0.1, ledger=ledger
    )
    async with running(service):
        ids = [(await service.create(SandboxCreate(timeout_s=600))).id for _ in range(SANDBOXES)]
        yield h, service, ids
    await h.stop()
    await h.driver.aclose()


async def loop_turns_during_reads(h: Harness, metering: Callable[[], Awaitable[object]], reads: int) -> int:
    """How many turns other work got between the first and the last counter read of `metering`,
    which reads `reads` sandboxes' counters."""
    turns = 0

    async def other_work() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    seen: list[int] = []
    read = h.driver.usage

    async def counted_read(sandbox_id: str) -> ResourceUsage:
        seen.append(turns)
        return await read(sandbox_id)

    h.driver.usage = counted_read  # type: ignore[method-assign]
    worker = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    try:
        await metering()
    finally:
        worker.cancel()
        h.driver.usage = read  # type: ignore[method-assign]
    assert len(seen) == reads, "every live sandbox's counters are read once"
    return seen[-1] - seen[0]


async def test_the_periodic_metering_takes_turns_and_writes_every_row(
    service: tuple[Harness, SandboxService, list[str]],
) -> None:
    h, sandboxes, _ = service
    h.clock.advance(30)
    before = len(await h.store.usage(None, 0, h.clock.now() + 1))
    turns = await loop_turns_during_reads(h, sandboxes.meter_once, SANDBOXES)
    assert turns >= SANDBOXES // READS_PER_TURN
    rows = await h.store.usage(None, 0, h.clock.now() + 1)
    assert len(rows) - before == SANDBOXES


async def test_a_usage_read_takes_turns(service: tuple[Harness, SandboxService, list[str]]) -> None:
    h, sandboxes, _ = service
    assert await loop_turns_during_reads(h, sandboxes.live_usage, SANDBOXES) >= SANDBOXES // READS_PER_TURN


async def test_a_sandbox_ended_while_the_others_are_read_is_billed_once(
    service: tuple[Harness, SandboxService, list[str]],
) -> None:
    h, sandboxes, ids = service
    h.clock.advance(30)
    last = ids[-1]
    read = h.driver.usage

    async def read_then_end_the_last(sandbox_id: str) -> ResourceUsage:
        used = await read(sandbox_id)
        if sandbox_id == ids[0]:
            await sandboxes.kill(last)
            h.clock.advance(5)  # time it is no longer running, which no row may bill
        return used

    h.driver.usage = read_then_end_the_last  # type: ignore[method-assign]
    try:
        await sandboxes.meter_once()
    finally:
        h.driver.usage = read  # type: ignore[method-assign]
    rows = [r for r in await h.store.usage(None, 0, h.clock.now() + 1) if r.sandbox_id == last]
    assert sum(r.active_s + r.idle_s for r in rows) == pytest.approx(30, abs=0.01)


# -- the scheduler's instances ----------------------------------------------------------------------

INSTANCES = READS_PER_TURN + 1
"""each runs a real `python3 app.py` on the fake driver, so a pass gets just enough of them for a turn"""


@pytest.fixture
async def scheduler(tmp_path: Path, archive: Path) -> AsyncIterator[Harness]:
    """A scheduler with INSTANCES ready instances: all of `echo`'s but one, then `last`'s, which a
    metering pass reads last."""
    h = Harness(tmp_path)
    await h.start()
    await h.scheduler.deploy("echo", FunctionConfig(cmd="python3 app.py", min_warm=INSTANCES - 1), archive)
    await h.scheduler.deploy("last", FunctionConfig(cmd="python3 app.py", min_warm=1), archive)
    h.scheduler.fill_once()
    instances = [i for name in ("echo", "last") for i in h.scheduler.function(name).instances.values()]
    await asyncio.gather(*(instance.ready for instance in instances))
    yield h
    await h.stop()
    await h.driver.aclose()


async def test_the_scheduler_s_metering_takes_turns_and_writes_every_instance_s_row(
    scheduler: Harness,
) -> None:
    h = scheduler
    ids = [i for name in ("echo", "last") for i in h.scheduler.function(name).instances]
    h.clock.advance(30)
    turns = await loop_turns_during_reads(h, lambda: h.scheduler.meter_once(h.clock.now()), INSTANCES)
    assert turns >= INSTANCES // READS_PER_TURN
    rows = await h.store.usage(None, 0, h.clock.now() + 1)
    written = [r.instance_id for r in rows if r.kind == "instance"]
    assert len(written) == INSTANCES and set(written) == set(ids)  # one row each


async def test_a_scheduler_usage_read_takes_turns(scheduler: Harness) -> None:
    turns = await loop_turns_during_reads(scheduler, scheduler.scheduler.live_usage, INSTANCES)
    assert turns >= INSTANCES // READS_PER_TURN


@contextlib.contextmanager
def last_stopped_at_the_first_read(h: Harness) -> Iterator[str]:
    """While inside, the first counter read stops `last`'s instance (its function is deleted: the
    instance is metered as it stops), then 5 s pass that no row may bill. Yields its id."""
    [last] = list(h.scheduler.function("last").instances)
    read = h.driver.usage
    stopped = False

    async def read_then_stop_the_last(sandbox_id: str) -> ResourceUsage:
        nonlocal stopped
        used = await read(sandbox_id)
        if not stopped:
            assert sandbox_id != last, "a pass reads `last`'s instance last, after the one it stops at"
            stopped = True
            await h.scheduler.delete_function("last")
            h.clock.advance(5)
        return used

    h.driver.usage = read_then_stop_the_last  # type: ignore[method-assign]
    try:
        yield last
    finally:
        h.driver.usage = read  # type: ignore[method-assign]


async def test_an_instance_stopped_while_the_others_are_metered_is_billed_once(scheduler: Harness) -> None:
    h = scheduler
    h.clock.advance(30)
    with last_stopped_at_the_first_read(h) as last:
        await h.scheduler.meter_once(h.clock.now())
    rows = [r for r in await h.store.usage(None, 0, h.clock.now() + 1) if r.instance_id == last]
    assert sum(r.active_s + r.idle_s for r in rows) == pytest.approx(30, abs=0.01)


async def test_an_instance_stopped_while_a_usage_read_reads_the_others_is_counted_once(
    scheduler: Harness,
) -> None:
    h = scheduler
    h.clock.advance(30)
    with last_stopped_at_the_first_read(h) as last:
        rows = await h.scheduler.usage(None, 0, h.clock.now() + 1)
    assert sum(r.active_s + r.idle_s for r in rows if r.instance_id == last) == pytest.approx(30, abs=0.01)
