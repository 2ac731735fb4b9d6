"""Billing of requests of no session (MCP's stateless, modern-era ones) on an instance that
sessions hold, on a FakeClock: the shares of the sessions idle meanwhile are the instance's
active time, on a row of its own; a session busy itself keeps its share; every second of the
instance is billed once (memory-seconds and cost add up to the instance's), and a usage read
(no meter taken) says what the next write will."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.protocol.functions import FunctionConfig
from agentcell.protocol.sessions import SessionCreate
from agentcell.server.meta.records import UsageRecord
from agentcell.server.scheduler.instances import Instance
from agentcell.server.scheduler.metering import (
    Activity,
    ActivityMeter,
    Resources,
    StatelessTime,
    instance_rows,
)
from agentcell.server.scheduler.sessions import Session
from agentcell.server.scheduler.usage import PriceTable, report
from tests.unit.test_scheduler import Harness

PRICES = PriceTable(cpu_core_s=0.01, memory_gib_s=0.001, idle_memory_gib_s=0.0001, storage_gib_h=1.0)
T0 = 1_000.0
GIB = 1 << 30
MCP_SHARED = {"affinity": {"kind": "mcp"}, "sessions_per_instance": 2, "max_instances": 1}


def test_a_session_meter_lends_its_idle_time_to_stateless_work() -> None:
    """Stateless work in flight 2-7 s; the session busy 4-6 s itself: of its 10 s, 2 are active,
    3 lent (2-4, 6-7: idle while the stateless work ran), 5 idle. A read says what a take will."""
    stateless = StatelessTime()
    meter = ActivityMeter(since=T0)
    meter.lend_idle_to(stateless, T0)
    stateless.begin(T0 + 2)
    meter.begin(T0 + 4)
    meter.end(T0 + 6)
    stateless.end(T0 + 7)
    assert meter.peek(T0 + 10) == Activity(active_s=2.0, idle_s=5.0, lent_s=3.0)
    assert meter.take(T0 + 10) == Activity(active_s=2.0, idle_s=5.0, lent_s=3.0)
    assert meter.take(T0 + 10).wall_s == 0.0


def test_the_split_is_exact_across_takes() -> None:
    stateless = StatelessTime()
    meter = ActivityMeter(since=T0)
    meter.lend_idle_to(stateless, T0)
    stateless.begin(T0 + 2)
    meter.begin(T0 + 4)
    assert meter.take(T0 + 5) == Activity(active_s=1.0, idle_s=2.0, lent_s=2.0)  # mid-way, busy
    meter.end(T0 + 6)
    stateless.end(T0 + 7)
    assert meter.peek(T0 + 6.5) == Activity(active_s=1.0, idle_s=0.0, lent_s=0.5)
    assert meter.take(T0 + 10) == Activity(active_s=1.0, idle_s=3.0, lent_s=1.0)
    never_lent = ActivityMeter(since=T0)  # (a sandbox's, or a session's before it is bound)
    stateless.begin(T0 + 10)
    assert never_lent.take(T0 + 20) == Activity(idle_s=20.0)


async def rows_for(cpu_s: float = 12.0, *, stateless_work: bool = True) -> list[UsageRecord]:
    """Two sessions on one instance (2 cores, 1 GiB), metered at T0 + 10 with `cpu_s` measured:
    stateless work in flight 0-7 s (if `stateless_work`), session a's own request 4-6 s."""
    instance = Instance("ins_1", "fn", 1, 8080, T0, state="ready")
    instance.meter.since = T0
    sessions = []
    for key in ("a", "b"):
        session = Session(f"ses_{key}", "fn", key, 1, T0, T0, ttl_s=3600, idle_timeout_s=600)
        session.meter.since = T0
        session.meter.lend_idle_to(instance.stateless, T0)
        sessions.append(session)
    if stateless_work:
        instance.stateless.begin(T0)
    sessions[0].meter.begin(T0 + 4)
    sessions[0].meter.end(T0 + 6)
    instance.stateless.end(T0 + 7)
    return instance_rows("t", "fn", instance, sessions, Resources(2, GIB), (cpu_s, 7), T0 + 10)


async def test_instance_rows_bill_lent_time_once_on_the_instance_s_row() -> None:
    """a lent 5 s of its half, b 7 s: 6 instance-seconds of stateless work, at the whole
    instance's cores and memory; CPU split by each row's part of the 10 s."""
    a, b, stateless = await rows_for()
    assert (a.kind, a.session_key, a.active_s, a.idle_s) == ("session", "a", 2.0, 3.0)
    assert (b.kind, b.session_key, b.active_s, b.idle_s) == ("session", "b", 0.0, 3.0)
    assert (stateless.kind, stateless.session_key, stateless.instance_id) == ("instance", None, "ins_1")
    assert (stateless.active_s, stateless.idle_s, stateless.cpu_cores, stateless.memory_gib) == (
        6.0,
        0.0,
        2,
        1.0,
    )
    assert (a.cpu_cores, a.memory_gib) == (1.0, 0.5)
    assert (a.cpu_s, b.cpu_s, stateless.cpu_s) == pytest.approx((3.0, 1.8, 7.2))  # 2.5, 1.5, 6 of 10 s
    assert stateless.start == T0 and stateless.end == T0 + 10 and stateless.memory_peak_bytes == 7
    memory_gib_s = sum(r.memory_gib * (r.active_s + r.idle_s) for r in (a, b, stateless))
    assert memory_gib_s == pytest.approx(1.0 * 10)  # the instance's 10 s, billed once


async def test_with_nothing_lent_the_rows_are_the_sessions_alone() -> None:
    a, b = await rows_for(stateless_work=False)
    assert (a.kind, a.active_s, a.idle_s, b.kind, b.active_s, b.idle_s) == (
        "session",
        2.0,
        8.0,
        "session",
        0.0,
        10.0,
    )
    assert (a.cpu_s, b.cpu_s) == (6.0, 6.0)  # the equal split, exactly as before


@pytest.fixture
async def h(tmp_path: Path, archive: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    await harness.start()
    shape = {"cmd": "python3 app.py", "cpu": 2, "memory_mb": 1024, **MCP_SHARED}
    config = FunctionConfig.model_validate(shape)
    await harness.scheduler.deploy("mcp", config, archive)
    yield harness
    await harness.stop()
    await harness.driver.aclose()


async def usage_lines(h: Harness, start: float) -> dict[str | None, tuple[float, float]]:
    """(active_s, idle_s) by session key (None: the instance's rows) read now, without writing;
    lines of no time (a metering pass at `start` ends a zero-length row there) left out."""
    rows = await h.scheduler.usage("default", start, h.clock.now() + 1)
    return {
        line.session_key: (line.active_s, line.idle_s)
        for line in report(rows, "session", start, h.clock.now() + 1, PRICES).lines
        if line.active_s or line.idle_s
    }


async def test_stateless_requests_beside_two_sessions_are_billed_to_the_instance(h: Harness) -> None:
    """Two MCP sessions share the one instance. Over 10 s: a stateless request in flight 0-7 s,
    session a's own request 4-6 s, b idle throughout. a: active 2, idle 3 (5 lent); b: idle 3
    (7 lent); the instance: active 6 — (5 + 7) / 2 of its seconds. Read and written alike."""
    await h.scheduler.create_session("mcp", SessionCreate(key="a"))
    await h.scheduler.create_session("mcp", SessionCreate(key="b"))
    await h.scheduler.meter_once(h.clock.now())
    start = h.clock.now()
    stateless = await h.scheduler.route_stateless("mcp")
    assert stateless.session is None and len(stateless.instance.sessions) == 2
    h.clock.advance(4)
    own = await h.scheduler.route("mcp", "a")
    assert own.instance is stateless.instance
    h.clock.advance(2)
    h.scheduler.release(own)
    h.clock.advance(1)
    h.scheduler.release(stateless)
    h.clock.advance(3)

    expected = {"a": (2.0, 3.0), "b": (0.0, 3.0), None: (6.0, 0.0)}
    assert await usage_lines(h, start) == expected
    await h.scheduler.meter_once(h.clock.now())
    rows = [r for r in await h.store.usage(None, start, h.clock.now() + 1) if r.function == "mcp"]
    assert {r.session_key: (r.active_s, r.idle_s) for r in rows} == expected
    memory_gib_s = sum(r.memory_gib * (r.active_s + r.idle_s) for r in rows)
    assert memory_gib_s == pytest.approx(1.0 * 10)
    usage = report(rows, "function", start, h.clock.now() + 1, PRICES)
    active = 2 * 0.5 + 6 * 1.0  # GiB-seconds of active time: a's half for 2 s, the instance for 6
    idle = (3 + 3) * 0.5
    cores = 2 * 1 + 6 * 2
    assert usage.total.cost == pytest.approx(cores * 0.01 + active * 0.001 + idle * 0.0001)


async def test_a_stateless_request_while_every_session_is_busy_bills_nothing_more(h: Harness) -> None:
    """The sessions' own requests cover the stateless one: their shares stay theirs, active."""
    await h.scheduler.create_session("mcp", SessionCreate(key="a"))
    await h.scheduler.meter_once(h.clock.now())
    start = h.clock.now()
    own = await h.scheduler.route("mcp", "a")
    stateless = await h.scheduler.route_stateless("mcp")
    h.clock.advance(5)
    h.scheduler.release(stateless)
    h.scheduler.release(own)
    h.clock.advance(5)
    assert await usage_lines(h, start) == {"a": (5.0, 5.0)}


async def test_stateless_requests_on_an_instance_no_session_holds_stay_the_instance_s(h: Harness) -> None:
    """No session on it: the instance's own row, active while the request runs (as before)."""
    first = await h.scheduler.route_stateless("mcp")  # starts the instance
    h.scheduler.release(first)
    await h.scheduler.meter_once(h.clock.now())
    start = h.clock.now()
    lease = await h.scheduler.route_stateless("mcp")
    h.clock.advance(3)
    h.scheduler.release(lease)
    h.clock.advance(2)
    assert await usage_lines(h, start) == {None: (3.0, 2.0)}


async def test_a_session_that_joins_mid_request_lends_only_from_then(h: Harness) -> None:
    """Stateless work in flight 0-6 s on a's instance; b is placed there at 2 s (its time starts
    then) and ends at 8 s; b lent 4 s (2-6), a 6 s. Each row's seconds: a 6 lent + 4 idle,
    b 4 lent + 2 idle; the instance, 2 s with a alone (2 of a's lent seconds at the whole
    instance) and 4 s with both (4 + 4 halves)."""
    await h.scheduler.create_session("mcp", SessionCreate(key="a"))
    await h.scheduler.meter_once(h.clock.now())
    start = h.clock.now()
    stateless = await h.scheduler.route_stateless("mcp")
    h.clock.advance(2)
    b = await h.scheduler.create_session("mcp", SessionCreate(key="b"))
    h.clock.advance(4)
    h.scheduler.release(stateless)
    h.clock.advance(2)
    await h.scheduler.delete_session(b.id)
    h.clock.advance(2)
    await h.scheduler.meter_once(h.clock.now())
    rows = [r for r in await h.store.usage(None, start, h.clock.now() + 1) if r.function == "mcp"]
    by_key: dict[str | None, list[float]] = {}
    for row in rows:
        by_key.setdefault(row.session_key, []).append(row.active_s)
        by_key.setdefault(f"{row.session_key}.idle", []).append(row.idle_s)
    assert sum(by_key[None]) == pytest.approx(2.0 + 4.0)
    assert sum(by_key["a.idle"]) == pytest.approx(4.0) and sum(by_key["b.idle"]) == pytest.approx(2.0)
    memory_gib_s = sum(r.memory_gib * (r.active_s + r.idle_s) for r in rows)
    assert memory_gib_s == pytest.approx(1.0 * 10)  # the instance's 10 s, billed once
