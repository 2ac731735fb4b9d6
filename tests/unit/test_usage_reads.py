"""Usage reads on a FakeClock write nothing: the answer is the ledger's rows plus, computed in
memory, what the next metering pass would write; that pass then writes it once (no double
counting, nothing lost), and rows queued by an ending are in the answer before they are written."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agentcell.protocol.functions import FunctionConfig
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.protocol.sessions import SessionCreate
from agentcell.server.meta.records import UsageRecord
from agentcell.server.scheduler.metering import ActivityMeter, UsageLedger
from agentcell.server.scheduler.sandboxes import SandboxService
from tests.service_loop import running
from tests.unit.test_scheduler import Harness


@pytest.fixture
async def h(tmp_path: Path, archive: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    await harness.start()
    await harness.scheduler.deploy("echo", FunctionConfig(cmd="python3 app.py"), archive)
    yield harness
    await harness.stop()
    await harness.driver.aclose()


def wall(rows: Sequence[UsageRecord], kind: str) -> float:
    return sum(r.active_s + r.idle_s for r in rows if r.kind == kind)


async def written(h: Harness) -> int:
    return len(await h.store.usage(None, 0, h.clock.now() + 1))


def test_peek_is_what_take_would_hand_over_and_changes_nothing() -> None:
    meter = ActivityMeter(since=100.0)
    meter.begin(101.0)
    meter.end(104.0)
    meter.begin(106.0)
    peeked = meter.peek(110.0)
    assert (peeked.active_s, peeked.idle_s) == (7.0, 3.0)
    assert meter.peek(110.0) == peeked and meter.since == 106.0
    taken = meter.take(110.0)
    assert (taken.active_s, taken.idle_s) == (peeked.active_s, peeked.idle_s)
    idle = ActivityMeter(since=0.0)
    assert (idle.peek(5.0).active_s, idle.peek(5.0).idle_s) == (0.0, 5.0)


async def test_reads_write_nothing_and_agree_with_the_periodic_write(h: Harness) -> None:
    await h.scheduler.create_session("echo", SessionCreate(key="k"))
    await h.scheduler.meter_once(h.clock.now())  # (the storage mark starts here)
    before = await written(h)
    h.clock.advance(30)
    first = await h.scheduler.usage("default", 0, h.clock.now() + 1)
    second = await h.scheduler.usage("default", 0, h.clock.now() + 1)
    assert await written(h) == before  # two reads in a row write nothing
    assert wall(first, "session") == pytest.approx(30, abs=0.5) == wall(second, "session")
    await h.scheduler.meter_once(h.clock.now())  # the periodic write
    assert await written(h) > before
    after = await h.scheduler.usage("default", 0, h.clock.now() + 1)
    assert wall(after, "session") == pytest.approx(wall(first, "session"))  # not twice, nothing lost
    h.clock.advance(10)
    later = await h.scheduler.usage("default", 0, h.clock.now() + 1)
    assert wall(later, "session") == pytest.approx(wall(first, "session") + 10)


async def test_a_row_queued_by_an_ending_is_read_before_it_is_written(h: Harness) -> None:
    session = await h.scheduler.create_session("echo", SessionCreate(key="gone"))
    h.clock.advance(20)
    await h.scheduler.delete_session(session.id)  # its last stretch is queued, not yet written
    h.clock.advance(5)
    rows = await h.scheduler.usage("default", 0, h.clock.now() + 1)
    assert wall([r for r in rows if r.session_key == "gone"], "session") == pytest.approx(20, abs=0.5)
    await h.scheduler.meter_once(h.clock.now())
    rows = await h.scheduler.usage("default", 0, h.clock.now() + 1)
    assert wall([r for r in rows if r.session_key == "gone"], "session") == pytest.approx(20, abs=0.5)


async def test_a_read_asks_for_its_tenant_and_window_only(h: Harness) -> None:
    await h.scheduler.create_session("echo", SessionCreate(key="k"))
    h.clock.advance(30)
    assert [r for r in await h.scheduler.usage("acme", 0, h.clock.now() + 1) if r.kind == "session"] == []
    assert await h.scheduler.usage("default", h.clock.now() + 1, h.clock.now() + 2) == []


@pytest.fixture
async def sandboxes(h: Harness) -> AsyncIterator[tuple[SandboxService, UsageLedger]]:
    ledger = UsageLedger(h.store)
    service = SandboxService(h.driver, h.clock, max_sandboxes=2, pids_max=64, stop_grace_s=0.1, ledger=ledger)
    async with running(service):
        yield service, ledger


async def test_a_live_sandbox_is_read_up_to_now_without_a_write(
    h: Harness, sandboxes: tuple[SandboxService, UsageLedger]
) -> None:
    service, ledger = sandboxes
    sandbox = await service.create(SandboxCreate(timeout_s=600))
    h.clock.advance(40)
    before = await written(h)
    for _ in range(2):
        rows = await ledger.read(None, 0, h.clock.now() + 1, [await service.live_usage()])
        assert wall([r for r in rows if r.sandbox_id == sandbox.id], "sandbox") == pytest.approx(40, abs=0.5)
    assert await written(h) == before
    await service.meter_once()
    h.clock.advance(5)
    rows = await ledger.read(None, 0, h.clock.now() + 1, [await service.live_usage()])
    assert wall([r for r in rows if r.sandbox_id == sandbox.id], "sandbox") == pytest.approx(45, abs=0.5)
    assert await written(h) == before + 1
