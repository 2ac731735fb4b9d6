"""SandboxMetrics: CPU, memory and disk samples of running sandboxes, taken when asked.

Each `sample()` reads the instance's cgroup usage (`SandboxDriver.usage`) and its workspace
filesystem's size (`fstatvfs` of `/home/user`: the instance's size-limited tmpfs), and adds one
sample to the sandbox's ring (the last `keep`). CPU use is the average since the sandbox's previous
sample (since its start for the first one), as a percentage of its CPU quota. No background
sampling: a sandbox nobody asks about costs nothing.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field

from agentcell.server.auth.principal import acting_as
from agentcell.server.clock import Clock
from agentcell.server.sandbox.driver import SANDBOX_HOME, SandboxDriver
from agentcell.server.scheduler.sandboxes import Sandbox, SandboxService

DEFAULT_KEEP = 60


@dataclass(frozen=True, slots=True)
class MetricSample:
    at: float
    cpu_count: int
    cpu_used_pct: float
    memory_used_bytes: int
    memory_total_bytes: int
    disk_used_bytes: int
    disk_total_bytes: int


@dataclass(slots=True)
class _Ring:
    started_at: float
    """the sandbox run these samples belong to (a resumed sandbox has the same id, a new run)"""
    samples: collections.deque[MetricSample]
    cpu_ns: int = 0
    at: float = field(default=0.0)


class SandboxMetrics:
    def __init__(
        self, sandboxes: SandboxService, driver: SandboxDriver, clock: Clock, *, keep: int = DEFAULT_KEEP
    ):
        self._sandboxes = sandboxes
        self._driver = driver
        self._clock = clock
        self._keep = keep
        self._rings: dict[str, _Ring] = {}

    async def sample(self, sandbox_id: str) -> list[MetricSample]:
        """Take a sample of the running sandbox now; every kept sample, oldest first. Raises
        NotFound, NotRunning."""
        sandbox = self._sandboxes.running(sandbox_id)
        self._forget_ended()
        ring = self._rings.get(sandbox.id)
        if ring is None or ring.started_at != sandbox.started_at:
            ring = self._rings[sandbox.id] = _Ring(
                sandbox.started_at, collections.deque(maxlen=self._keep), at=sandbox.started_at
            )
        used = await self._driver.usage(sandbox.id)
        disk_used, disk_total = await self._disk(sandbox)
        now = self._clock.now()
        ring.samples.append(
            MetricSample(
                at=now,
                cpu_count=max(1, round(sandbox.request.cpu)),
                cpu_used_pct=_cpu_pct(used.cpu_ns - ring.cpu_ns, now - ring.at, sandbox.request.cpu),
                memory_used_bytes=used.memory_bytes,
                memory_total_bytes=sandbox.request.memory_mb << 20,
                disk_used_bytes=disk_used,
                disk_total_bytes=disk_total,
            )
        )
        ring.cpu_ns, ring.at = used.cpu_ns, now
        return list(ring.samples)

    async def _disk(self, sandbox: Sandbox) -> tuple[int, int]:
        fd = await self._driver.files(sandbox.id).open_dir(SANDBOX_HOME)
        try:
            stat = os.fstatvfs(fd)
        finally:
            os.close(fd)
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize, stat.f_blocks * stat.f_frsize

    def _forget_ended(self) -> None:
        with acting_as(None):  # every tenant's sandboxes
            running = {s.id for s in self._sandboxes.find({}, "running")}
        for sandbox_id in self._rings.keys() - running:
            del self._rings[sandbox_id]


def _cpu_pct(cpu_ns: int, wall_s: float, cores: float) -> float:
    """Average CPU use over `wall_s` as a percentage of `cores` (0 for an empty window)."""
    if wall_s <= 0 or cpu_ns <= 0:
        return 0.0
    return round(100.0 * cpu_ns / 1e9 / wall_s / cores, 2)
