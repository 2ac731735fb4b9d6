"""Metering: wall time split into active and idle, and the usage rows the ledger keeps.

An `ActivityMeter` is active while at least one unit of work (a request, a command, an execution)
is in flight, idle otherwise; `take(now)` hands over what accumulated since the last take. The
scheduler and the sandbox service turn those, plus CPU from the cgroup and memory limits, into
`UsageRecord`s periodically and when things end; costs are computed at query time from the price
table (idle time pays memory at the idle rate and no CPU: the seeds' active/idle model).

An instance that sessions hold is billed per session, each for an equal share of it. Requests of
no session on it (MCP's stateless ones) are billed to the instance: while one is in flight, the
shares of the sessions idle meanwhile are its active time (`StatelessTime`, the sessions'
meters' `lent_s`), on a row of the instance's own; so each second of the instance is billed once,
and as active whenever a request is in flight.

Reading usage writes nothing: `UsageLedger.read` adds to the stored rows the queued ones and what
each live meter holds (`peek`: the rows the next write would make, computed in memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from agentcell.server.meta.records import UsageRecord
from agentcell.server.meta.store import MetaStore

if TYPE_CHECKING:  # (they hold meters: a runtime import would be circular)
    from agentcell.server.scheduler.instances import Instance
    from agentcell.server.scheduler.sessions import Session

GIB = float(1 << 30)
READS_PER_TURN = 8
"""instances whose cgroup counters are read in one turn of the event loop: four file reads each,
~0.2 ms here. Reading a node's 1,000 sandboxes in one turn held every request for 180-290 ms once
a minute; in turns of 8 the slowest request during a pass took 6.5 ms (bench/RESULTS.md,
session 18)."""

T = TypeVar("T")


async def taking_turns(items: Iterable[T], per_turn: int = READS_PER_TURN) -> AsyncIterator[T]:
    """`items`, giving the event loop a turn after every `per_turn` of them: metering reads each
    live instance's counters, which must not stall the requests of a node with thousands."""
    for index, item in enumerate(items):
        if index and index % per_turn == 0:
            await asyncio.sleep(0)
        yield item


@dataclass(slots=True)
class Activity:
    active_s: float = 0.0
    idle_s: float = 0.0
    lent_s: float = 0.0
    """time the owner was idle while its instance served requests of no session (stateless):
    that stretch of its share is the instance's active time, billed once, on the instance's row"""

    @property
    def wall_s(self) -> float:
        return self.active_s + self.idle_s + self.lent_s


@dataclass(slots=True)
class StatelessTime:
    """How long an instance has had at least one request of no session in flight (MCP's stateless
    requests), counted up over its life. The meters of the sessions bound to it read it (see
    `ActivityMeter.lend_idle_to`): their idle time while it counts is lent to that work."""

    since: float = 0.0
    busy: int = 0
    total_s: float = 0.0

    def begin(self, now: float) -> None:
        self._advance(now)
        self.busy += 1

    def end(self, now: float) -> None:
        self._advance(now)
        self.busy = max(0, self.busy - 1)

    def reading(self, now: float) -> float:
        return self.total_s + (max(0.0, now - self.since) if self.busy else 0.0)

    def _advance(self, now: float) -> None:
        self.total_s, self.since = self.reading(now), now


@dataclass(slots=True)
class ActivityMeter:
    """Active while `busy`, else idle — or, once lent to an instance's `StatelessTime`, lent for
    the part of its idle time during which that instance served requests of no session."""

    since: float
    busy: int = 0
    pending: Activity = field(default_factory=Activity)
    stateless: StatelessTime | None = None
    stateless_mark: float = 0.0
    """`stateless`'s reading at `since`"""

    def begin(self, now: float) -> None:
        self._advance(now)
        self.busy += 1

    def end(self, now: float) -> None:
        self._advance(now)
        self.busy = max(0, self.busy - 1)

    def lend_idle_to(self, stateless: StatelessTime, now: float) -> None:
        """From `now`, idle time while `stateless` counts is lent (a session bound to an instance)."""
        self._advance(now)
        self.stateless, self.stateless_mark = stateless, stateless.reading(now)

    def take(self, now: float) -> Activity:
        self._advance(now)
        taken, self.pending = self.pending, Activity()
        return taken

    def peek(self, now: float) -> Activity:
        """What `take(now)` would hand over, leaving the meter as it is."""
        elapsed, (lent, _) = max(0.0, now - self.since), self._lent(now)
        if self.busy:
            return Activity(self.pending.active_s + elapsed, self.pending.idle_s, self.pending.lent_s)
        return Activity(
            self.pending.active_s, self.pending.idle_s + elapsed - lent, self.pending.lent_s + lent
        )

    def _lent(self, now: float) -> tuple[float, float]:
        """(idle seconds lent since `since`, `stateless`'s reading now)."""
        if self.stateless is None:
            return 0.0, 0.0
        reading = self.stateless.reading(now)
        if self.busy:
            return 0.0, reading
        return min(max(0.0, now - self.since), max(0.0, reading - self.stateless_mark)), reading

    def _advance(self, now: float) -> None:
        elapsed, (lent, self.stateless_mark) = max(0.0, now - self.since), self._lent(now)
        if self.busy:
            self.pending.active_s += elapsed
        else:
            self.pending.idle_s += elapsed - lent
            self.pending.lent_s += lent
        self.since = now


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose usage a row is: the tenant, and the function/session/instance or sandbox it came from."""

    tenant: str
    kind: str  # session | instance | sandbox | storage
    function: str | None = None
    session_id: str | None = None
    session_key: str | None = None
    instance_id: str | None = None
    sandbox_id: str | None = None


@dataclass(frozen=True, slots=True)
class Resources:
    cpu_cores: float
    memory_bytes: int


def usage_row(
    owner: Owner,
    start: float,
    end: float,
    activity: Activity,
    resources: Resources,
    cpu_s: float = 0.0,
    memory_peak_bytes: int = 0,
) -> UsageRecord:
    return UsageRecord(
        tenant=owner.tenant,
        kind=owner.kind,
        function=owner.function,
        session_id=owner.session_id,
        session_key=owner.session_key,
        instance_id=owner.instance_id,
        sandbox_id=owner.sandbox_id,
        start=start,
        end=end,
        active_s=activity.active_s,
        idle_s=activity.idle_s,
        cpu_cores=resources.cpu_cores,
        memory_gib=resources.memory_bytes / GIB,
        cpu_s=cpu_s,
        memory_peak_bytes=memory_peak_bytes,
        stored_gib_h=0.0,
    )


def storage_row(owner: Owner, start: float, end: float, stored_bytes: int) -> UsageRecord:
    return UsageRecord(
        tenant=owner.tenant,
        kind="storage",
        function=owner.function,
        session_key=owner.session_key,
        start=start,
        end=end,
        stored_gib_h=stored_bytes / GIB * max(0.0, end - start) / 3600,
    )


def instance_rows(
    tenant: str,
    function: str,
    instance: Instance,
    sessions: Sequence[Session],
    resources: Resources,
    measured: tuple[float, int],
    now: float,
    *,
    advance: bool = True,
) -> list[UsageRecord]:
    """The usage of one instance since it was last metered: a row per bound session (each with an
    equal share of the instance's CPU, memory and cores), or one row for the instance itself
    when no session holds it (a warm or spare instance). `measured`: (CPU seconds since the last
    time, memory peak in bytes) from the instance's cgroup. `advance=False`: the same rows, with
    no meter taken (a usage read's not-yet-written part).

    Requests of no session (MCP's stateless ones) on an instance that sessions hold: the shares
    of the sessions idle meanwhile are lent to that work, billed as active time on one more row,
    the instance's (its whole cores and memory, so its seconds are the instance's); a session
    busy itself meanwhile keeps its share, active. Each second of the instance is billed once,
    and CPU is split by each row's part of the time."""
    cpu_s, peak = measured

    def activity_of(meter: ActivityMeter) -> Activity:
        return meter.take(now) if advance else meter.peek(now)

    whole = activity_of(instance.meter)
    instance_owner = Owner(tenant, "instance", function, instance_id=instance.id)
    if not sessions:
        return [usage_row(instance_owner, now - whole.wall_s, now, whole, resources, cpu_s, peak)]
    parts = len(sessions)
    share = Resources(resources.cpu_cores / parts, resources.memory_bytes // parts)
    activities = [(session, activity_of(session.meter)) for session in sessions]
    lent_s = sum(activity.lent_s for _, activity in activities) / parts
    total_s = sum(activity.wall_s for _, activity in activities) / parts

    def cpu_of(seconds: float) -> float:
        """CPU for a row holding `seconds` of the instance (an equal split when none is lent)."""
        return cpu_s * seconds / total_s if lent_s else cpu_s / parts

    rows = []
    for session, activity in activities:
        owner = Owner(tenant, "session", function, session.id, session.key, instance.id)
        cpu = cpu_of((activity.wall_s - activity.lent_s) / parts)
        rows.append(usage_row(owner, now - activity.wall_s, now, activity, share, cpu, peak))
    if lent_s:
        start = now - max(activity.wall_s for _, activity in activities)
        stateless = Activity(active_s=lent_s)
        rows.append(usage_row(instance_owner, start, now, stateless, resources, cpu_of(lent_s), peak))
    return rows


def cpu_since(counter_ns: int, metered_ns: int) -> float:
    """CPU seconds a cgroup counted since `metered_ns` (never negative: a counter read before
    the last write may be behind it)."""
    return max(0, counter_ns - metered_ns) / 1e9


LiveUsage = Callable[[], list[UsageRecord]]
"""The usage not yet queued or written, as rows made when called (synchronously: nothing can
move between the live meters, the ledger's queue and the store meanwhile)."""


class Metered(Protocol):
    async def live_usage(self) -> LiveUsage:
        """Read what needs I/O (cgroup counters, stored bytes) now; meter nothing, write nothing."""
        ...


class UsageLedger:
    """Usage rows queued by the scheduler and the sandbox service (one ledger for both), written
    in batches. A write and a read exclude each other, so a read sees each row exactly once:
    in the store, in the queue, or still in a live meter."""

    def __init__(self, store: MetaStore) -> None:
        self._store = store
        self._rows: list[UsageRecord] = []
        self._moving = asyncio.Lock()

    def add(self, rows: Sequence[UsageRecord]) -> None:
        self._rows.extend(rows)

    async def write(self) -> int:
        async with self._moving:
            rows, self._rows = self._rows, []
            if rows:
                await self._store.put_usage(rows)
            return len(rows)

    async def read(
        self, tenant: str | None, since: float, until: float, live: Sequence[LiveUsage] = ()
    ) -> list[UsageRecord]:
        """The rows of `tenant` (None: all) that started in [since, until): those written, those
        queued, and `live`'s (usage up to now that no row holds yet). Writes nothing."""
        async with self._moving:
            stored = await self._store.usage(tenant, since, until)
            unwritten = [*self._rows, *(row for rows in live for row in rows())]
        return stored + [
            r for r in unwritten if since <= r.start < until and (tenant is None or r.tenant == tenant)
        ]
