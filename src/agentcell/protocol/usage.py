"""Usage: metered active and idle time, CPU, memory and storage, with their cost."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agentcell.protocol.common import ReplyModel

UsageGrouping = Literal["tenant", "function", "session", "sandbox", "kind"]


class UsageLine(ReplyModel):
    tenant: str
    function: str | None = None
    session_key: str | None = Field(default=None, description="by=session: the session's key")
    session_id: str | None = None
    sandbox_id: str | None = Field(default=None, description="by=sandbox")
    kind: str | None = Field(default=None, description="by=kind: session, instance (spare), sandbox, storage")
    active_s: float = Field(description="seconds with a request, command or execution in flight")
    idle_s: float
    cpu_s: float = Field(description="CPU seconds used (from the cgroup)")
    memory_gib_s: float = Field(description="memory limit x wall time")
    memory_peak_gib: float
    storage_gib_h: float
    cost: float = Field(description="active: cores and memory; idle: memory at the idle rate; storage")


class UsageReport(ReplyModel):
    since: float
    until: float
    by: UsageGrouping
    lines: list[UsageLine]
    total: UsageLine
