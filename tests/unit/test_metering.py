"""Metering on a FakeClock: a session busy 10 s then idle 50 s is billed exactly that, the idle
part at the idle memory rate; warm time before a claim is the instance's; totals reconcile."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.protocol.functions import FunctionConfig
from agentcell.protocol.sessions import SessionCreate
from agentcell.server.scheduler.metering import ActivityMeter
from agentcell.server.scheduler.usage import PriceTable, report, to_csv
from tests.unit.test_scheduler import Harness

PRICES = PriceTable(cpu_core_s=0.01, memory_gib_s=0.001, idle_memory_gib_s=0.0001, storage_gib_h=1.0)


@pytest.fixture
async def h(tmp_path: Path, archive: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    await harness.start()
    config = FunctionConfig(cmd="python3 app.py", cpu=2, memory_mb=1024)
    await harness.scheduler.deploy("echo", config, archive)
    yield harness
    await harness.stop()
    await harness.driver.aclose()


def test_an_activity_meter_splits_wall_time_by_work_in_flight() -> None:
    meter = ActivityMeter(since=100.0)
    meter.begin(101.0)
    meter.begin(102.0)  # overlapping work counts once
    meter.end(104.0)
    meter.end(106.0)
    taken = meter.take(110.0)
    assert (taken.active_s, taken.idle_s) == (5.0, 5.0)
    assert meter.take(110.0).wall_s == 0.0


async def test_busy_10_s_then_idle_50_s_is_billed_as_such(h: Harness) -> None:
    start = h.clock.now()
    lease = await h.scheduler.route("echo", "alice")
    h.clock.advance(10)
    h.scheduler.release(lease)
    h.clock.advance(50)
    await h.scheduler.meter_once(h.clock.now())
    rows = await h.store.usage(None, start - 1, h.clock.now() + 1)
    sessions = [r for r in rows if r.kind == "session"]
    assert len(sessions) == 1
    row = sessions[0]
    assert row.session_key == "alice" and row.function == "echo"
    assert row.active_s == pytest.approx(10, rel=0.02) and row.idle_s == pytest.approx(50, rel=0.02)
    assert (row.cpu_cores, row.memory_gib) == (2, 1.0)
    usage = report(rows, "session", start, h.clock.now() + 1, PRICES)
    line = next(line for line in usage.lines if line.session_key == "alice")
    expected = 10 * (2 * 0.01 + 1.0 * 0.001) + 50 * 1.0 * 0.0001  # idle pays memory, no CPU
    assert line.cost == pytest.approx(expected, rel=0.02)
    assert usage.total.cost == pytest.approx(sum(line.cost for line in usage.lines))
    by_tenant = report(rows, "tenant", start, h.clock.now() + 1, PRICES)
    assert by_tenant.lines[0].cost == pytest.approx(usage.total.cost)  # sessions add up to the tenant


async def test_a_warm_instance_s_time_before_its_claim_is_the_instance_s(h: Harness, archive: Path) -> None:
    await h.scheduler.deploy("warm", FunctionConfig(cmd="python3 app.py", min_warm=1), archive)
    h.scheduler.fill_once()
    await h.scheduler.create_session("warm", SessionCreate())
    h.clock.advance(30)
    await h.scheduler.meter_once(h.clock.now())
    rows = [r for r in await h.store.usage(None, 0, h.clock.now() + 1) if r.function == "warm"]
    kinds = {r.kind for r in rows}
    assert "session" in kinds and all(r.active_s + r.idle_s >= 0 for r in rows)
    session_wall = sum(r.active_s + r.idle_s for r in rows if r.kind == "session")
    assert session_wall == pytest.approx(30, abs=0.5)


async def test_an_ended_session_s_last_stretch_is_billed_to_it(h: Harness) -> None:
    """Time since the last metering pass of a session that ends (here: deleted) is the session's,
    not its instance's."""
    session = await h.scheduler.create_session("echo", SessionCreate(key="k"))
    h.clock.advance(30)
    await h.scheduler.delete_session(session.id)
    await h.scheduler.meter_once(h.clock.now())
    rows = await h.store.usage(None, 0, h.clock.now() + 1)
    [row] = [r for r in rows if r.kind == "session"]
    assert row.session_key == "k" and row.active_s + row.idle_s == pytest.approx(30, abs=0.5)
    assert sum(r.active_s + r.idle_s for r in rows if r.kind == "instance") < 0.5


async def test_usage_reports_come_as_csv_too(h: Harness) -> None:
    lease = await h.scheduler.route("echo", 'k,with"quotes')
    h.scheduler.release(lease)
    h.clock.advance(5)
    rows = await h.scheduler.usage("default", 0, h.clock.now() + 1)
    text = to_csv(report(rows, "session", 0, h.clock.now() + 1, PRICES))
    header, *lines = text.splitlines()
    assert header.startswith("tenant,function,session_key,session_id,sandbox_id,kind,active_s")
    assert any('"k,with""quotes"' in line for line in lines)
