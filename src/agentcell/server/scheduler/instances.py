"""Instance: one isolated sandbox running a function version's server, and its bookkeeping."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Literal

from agentcell.server.scheduler.metering import ActivityMeter, StatelessTime

InstanceState = Literal["starting", "ready", "stopping", "gone"]


def new_instance_id() -> str:
    return "ins_" + secrets.token_hex(8)


@dataclass(slots=True, eq=False)
class Instance:
    id: str
    function: str
    version: int
    port: int
    created_at: float
    state: InstanceState = "starting"
    sessions: set[str] = field(default_factory=set)
    in_flight: int = 0
    last_used_at: float = 0.0
    failure: str | None = None
    """why the instance failed, once it has"""
    ready: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    """set once its sandbox is gone (after a stop, whoever started it)"""
    meter: ActivityMeter = field(default_factory=lambda: ActivityMeter(0.0))
    stateless: StatelessTime = field(default_factory=StatelessTime)
    """while requests of no session are in flight on it: its sessions' meters lend it idle time"""
    cpu_ns_metered: int = 0
    """the cgroup's CPU time already in the usage ledger"""

    def begin(self, now: float) -> None:
        """A request starts on this instance."""
        self.in_flight += 1
        self.meter.begin(now)

    def end(self, now: float) -> None:
        self.in_flight -= 1
        self.meter.end(now)
        self.last_used_at = now

    @property
    def is_ready(self) -> bool:
        return self.state == "ready"

    @property
    def is_live(self) -> bool:
        return self.state in ("starting", "ready")

    def has_room(self, sessions_per_instance: int) -> bool:
        return self.is_live and len(self.sessions) < sessions_per_instance

    def mark_ready(self) -> None:
        self.state = "ready"
        if not self.ready.done():
            self.ready.set_result(None)

    def mark_failed(self, reason: str) -> None:
        self.state = "gone"
        self.failure = self.failure or reason
        if not self.ready.done():
            self.ready.set_exception(InstanceFailed(f"instance {self.id} failed: {reason}"))
            self.ready.exception()  # retrieved: nobody may be waiting


class InstanceFailed(Exception):
    pass
