"""Usage reports: ledger rows grouped by tenant, function, session or kind, priced by the price
table (active time pays cores and memory; idle time pays memory only, at the idle rate)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agentcell.protocol.usage import UsageGrouping, UsageLine, UsageReport
from agentcell.server.meta.records import UsageRecord

GIB = float(1 << 30)


@dataclass(frozen=True, slots=True)
class PriceTable:
    cpu_core_s: float
    memory_gib_s: float
    idle_memory_gib_s: float
    storage_gib_h: float

    def cost(self, row: UsageRecord) -> float:
        active = row.active_s * (row.cpu_cores * self.cpu_core_s + row.memory_gib * self.memory_gib_s)
        idle = row.idle_s * row.memory_gib * self.idle_memory_gib_s
        return active + idle + row.stored_gib_h * self.storage_gib_h


def _group(row: UsageRecord, by: UsageGrouping) -> tuple[str | None, ...]:
    if by == "tenant":
        return (row.tenant,)
    if by == "function":
        return (row.tenant, row.function)
    if by == "kind":
        return (row.tenant, row.kind)
    if by == "sandbox":
        return (row.tenant, row.sandbox_id)
    return (row.tenant, row.function, row.session_key, row.session_id)


def _line(
    group: tuple[str | None, ...], by: UsageGrouping, rows: list[UsageRecord], prices: PriceTable
) -> UsageLine:
    fields: dict[str, str | None] = {"tenant": group[0] or ""}
    if by == "function":
        fields["function"] = group[1]
    elif by == "kind":
        fields["kind"] = group[1]
    elif by == "sandbox":
        fields["sandbox_id"] = group[1]
    elif by == "session":
        fields.update(function=group[1], session_key=group[2], session_id=group[3])
    return UsageLine(
        **fields,
        active_s=sum(r.active_s for r in rows),
        idle_s=sum(r.idle_s for r in rows),
        cpu_s=sum(r.cpu_s for r in rows),
        memory_gib_s=sum(r.memory_gib * (r.active_s + r.idle_s) for r in rows),
        memory_peak_gib=max((r.memory_peak_bytes for r in rows), default=0) / GIB,
        storage_gib_h=sum(r.stored_gib_h for r in rows),
        cost=sum(prices.cost(r) for r in rows),
    )


def report(
    rows: Iterable[UsageRecord], by: UsageGrouping, since: float, until: float, prices: PriceTable
) -> UsageReport:
    groups: dict[tuple[str | None, ...], list[UsageRecord]] = {}
    for row in rows:
        groups.setdefault(_group(row, by), []).append(row)
    ordered = sorted(groups.items(), key=lambda item: tuple(part or "" for part in item[0]))
    lines = [_line(group, by, members, prices) for group, members in ordered]
    everything = [row for members in groups.values() for row in members]
    total = _line(("*",), "tenant", everything, prices)
    return UsageReport(since=since, until=until, by=by, lines=lines, total=total)


CSV_COLUMNS = (
    "tenant",
    "function",
    "session_key",
    "session_id",
    "sandbox_id",
    "kind",
    "active_s",
    "idle_s",
    "cpu_s",
    "memory_gib_s",
    "memory_peak_gib",
    "storage_gib_h",
    "cost",
)


def to_csv(usage: UsageReport) -> str:
    def cell(value: object) -> str:
        text = "" if value is None else f"{value:.6f}" if isinstance(value, float) else str(value)
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text

    lines = [",".join(CSV_COLUMNS)]
    for line in usage.lines:
        data = line.model_dump()
        lines.append(",".join(cell(data[column]) for column in CSV_COLUMNS))
    return "\n".join(lines) + "\n"
