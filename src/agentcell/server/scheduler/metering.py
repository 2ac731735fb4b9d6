"""Metering: wall time split into active and idle, and the usage rows the ledger keeps.

An `ActivityMeter` is active while at least one unit of work (a request, a command, an execution)
is in flight, idle otherwise; `take(now)` hands over what accumulated since the last take. The
scheduler and the sandbox service turn those, plus CPU from the cgroup and memory limits, into
`UsageRecord`s periodically and when things end; costs are computed at query time from the price
table (idle time pays memory at the idle rate and no CPU: the seeds' active/idle model).

Reading usage writes nothing: `UsageLedger.read` adds to the stored rows the queued ones and what
each live meter holds (`peek`: the rows the next write would make, computed in memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from agentcell.server.meta.records import UsageRecord
from agentcell.server.meta.store import MetaStore

if TYPE_CHECKING:  # (they hold meters: a runtime import would be circular)
    from agentcell.server.scheduler.instances import Instance
    from agentcell.server.scheduler.sessions import Session

GIB = float(1 << 30)


@dataclass(slots=True)
class Activity:
    active_s: float = 0.0
    idle_s: float = 0.0

    @property
    def wall_s(self) -> float:
        return self.active_s + self.idle_s


@dataclass(slots=True)
class ActivityMeter:
    since: float
    busy: int = 0
    pending: Activity = field(default_factory=Activity)

    def begin(self, now: float) -> None:
        self._advance(now)
        self.busy += 1

    def end(self, now: float) -> None:
        self._advance(now)
        self.busy = max(0, self.busy - 1)

    def take(self, now: float) -> Activity:
        self._advance(now)
        taken, self.pending = self.pending, Activity()
        return taken

    def peek(self, now: float) -> Activity:
        """What `take(now)` would hand over, leaving the meter as it is."""
        elapsed = max(0.0, now - self.since)
        if self.busy:
            return Activity(self.pending.active_s + elapsed, self.pending.idle_s)
        return Activity(self.pending.active_s, self.pending.idle_s + elapsed)

    def _advance(self, now: float) -> None:
        elapsed = max(0.0, now - self.since)
        if self.busy:
            self.pending.active_s += elapsed
        else:
            self.pending.idle_s += elapsed
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
    no meter taken (a usage read's not-yet-written part)."""
    cpu_s, peak = measured

    def activity_of(meter: ActivityMeter) -> Activity:
        return meter.take(now) if advance else meter.peek(now)

    whole = activity_of(instance.meter)
    if not sessions:
        owner = Owner(tenant, "instance", function, instance_id=instance.id)
        return [usage_row(owner, now - whole.wall_s, now, whole, resources, cpu_s, peak)]
    parts = len(sessions)
    share = Resources(resources.cpu_cores / parts, resources.memory_bytes // parts)
    rows = []
    for session in sessions:
        activity = activity_of(session.meter)
        owner = Owner(tenant, "session", function, session.id, session.key, instance.id)
        rows.append(usage_row(owner, now - activity.wall_s, now, activity, share, cpu_s / parts, peak))
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
