"""SandboxPool: pre-started, never-used instances of the default sandbox spec, claimed by creates.

A create whose spec the pool can serve (template `base`, default disk and network, no mounts; any
cpu and memory, rewritten into the instance's cgroups at claim time) takes an idle instance
instead of spawning one, so a burst of creates costs no spawn work. Pooled instances get a fresh
random sandbox id when they are started and keep it when claimed: an id is never shown to anyone
before its claim, and a claimed instance is indistinguishable from one started for the request
(the service makes its record, deadline, quotas and meter at claim time; env is applied per
command). Until claimed an instance belongs to the pool only: the sandbox service does not know
it, so it is never listed, metered or billed.

Refills run at low priority: one instance at a time, and only after no create has arrived for
`quiet_s`, so that refilling never competes with a burst for the CPU (an earlier pool that
refilled at once made sequential creates slower and bursts no faster). The app's lifespan runs
`run()` after the sandbox service has reaped what an earlier server left (a crashed server's
pooled instances are orphans like any other), and calls `aclose()` at shutdown.

The pool sizes itself for bursts: `size` is its floor, and it holds as many as the most creates
it could serve that were in flight at once (asked the pool and not yet running) in the last
`BURST_MEMORY_S`, up to `max_size`. A node whose agents create 50 sandboxes at once pays the spawns
once; the next burst claims. Creates one after another are never a burst, however close together:
each is alone in flight (an earlier pool counted creates less than `quiet_s` apart as one burst,
and grew to 40 idle instances for 40 create-then-delete calls in a row). A claim is instant, so a
burst the pool serves shows little concurrency; a burst that takes every idle instance keeps the
remembered size instead. Once that burst is forgotten, the extra idle instances are stopped, again
only while the node is quiet.

Idle instances share the node's `max_sandboxes` with live sandboxes and function instances
without counting against it (scheduler/node_capacity.py): a create is refused only for live and
starting sandboxes and instances, and claims an idle instance if one fits. The pool never holds
more than the room those leave (`room`, the node capacity's), and a sandbox or function instance
about to spawn on a node without room stops idle instances first (`make_room`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import replace

from agentcell.errors import AgentcellError, NotFound
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.server.clock import Clock
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.observability.registry import Counter, Registry
from agentcell.server.sandbox.driver import SandboxDriver, SandboxSpec

log = logging.getLogger(__name__)

QUIET_S = 0.5
"""refills wait until no create has arrived for this long"""
RETRY_S = (1.0, 30.0)
"""backoff after a failed refill: first delay, longest delay"""
BURST_MEMORY_S = 600.0
"""the pool stays sized for the largest burst of creates seen (or served) within this long"""


def default_spec(pids_max: int) -> SandboxSpec:
    """The spec a create with every default gets (what the pool keeps ready)."""
    request = SandboxCreate()
    return SandboxSpec(
        sandbox_id="pooled",
        template=request.template,
        cpu_millis=max(10, int(request.cpu * 1000)),
        memory_bytes=request.memory_mb << 20,
        disk_bytes=request.disk_mb << 20,
        pids_max=pids_max,
        egress=EgressPolicy.from_wire(request.network),
    )


class SandboxPool:
    """Owns the idle pre-started instances of one node: fills, hands out and stops them."""

    def __init__(
        self,
        driver: SandboxDriver,
        clock: Clock,
        *,
        size: int,
        max_size: int | None = None,
        spec: SandboxSpec,
        new_id: Callable[[], str],
        quiet_s: float = QUIET_S,
        registry: Registry | None = None,
    ) -> None:
        if size < 0:
            raise ValueError(f"the sandbox pool size must be 0 or more, got {size}")
        self.size = size
        """the floor: held whatever the bursts (0: no pool at all)"""
        self.max_size = max(size, size if max_size is None else max_size)
        """the most it grows to for bursts"""
        self._driver = driver
        self._clock = clock
        self._spec = spec
        self._new_id = new_id
        self._quiet_s = quiet_s
        self._idle: dict[str, asyncio.Task[None] | None] = {}
        """idle instance id → its death watcher, oldest first"""
        self._filling = 0
        self._last_create = float("-inf")
        self._in_flight = 0
        """creates of the pool's spec that asked the pool and are not running yet"""
        self._peak, self._peak_at = 0, float("-inf")
        """the largest burst remembered (creates in flight at once), and when it was last needed"""
        self.room: Callable[[], int] = lambda: self.max_size
        """How many instances the node holds beyond its live and starting sandboxes and function
        instances (its max_sandboxes minus those); set by the sandbox service, unlimited on a pool
        alone."""
        self._retry_at = float("-inf")
        self._retry_s = RETRY_S[0]
        self._changed = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._closed = False
        self._hits, self._misses = Counter(), Counter()
        if registry is not None:
            self._register(registry)

    @property
    def ready(self) -> int:
        """Idle instances waiting for a claim."""
        return len(self._idle)

    def target(self, now: float) -> int:
        """How many idle instances the pool means to hold now."""
        if self.size == 0:
            return 0
        return max(0, min(self.max_size, max(self.size, self._remembered_peak(now)), self.room()))

    def idle_ids(self) -> list[str]:
        """Ids of the idle instances (diagnostics and tests; never shown through the API)."""
        return list(self._idle)

    # -- claims ----------------------------------------------------------------------------------

    def fits(self, spec: SandboxSpec) -> bool:
        """Whether a pooled instance can become `spec` (only cgroup limits may differ)."""
        ours = self._spec
        return (
            spec.template == ours.template
            and spec.disk_bytes == ours.disk_bytes
            and spec.pids_max == ours.pids_max
            and spec.env == ours.env
            and spec.mounts == ours.mounts
            and spec.egress == ours.egress
        )

    @contextlib.contextmanager
    def creating(self, spec: SandboxSpec) -> Iterator[None]:
        """Count a create of `spec` as in flight while inside (the service holds it from its
        claim until its instance runs, a spawn included): the pool sizes itself for the most
        creates it could serve in flight at once."""
        if not self.fits(spec):
            yield
            return
        self._in_flight += 1
        now = self._clock.now()
        if self._in_flight >= self._remembered_peak(now):
            self._peak, self._peak_at = self._in_flight, now
        try:
            yield
        finally:
            self._in_flight -= 1

    async def claim(self, spec: SandboxSpec) -> str | None:
        """An idle instance adapted to `spec`, now the caller's (its id is the sandbox's id); None
        if the pool cannot serve `spec` or is empty (the caller starts one itself). Every create
        calls this, so that refills wait for a quiet period."""
        now = self._clock.now()
        self._last_create = now
        self._changed.set()
        if not self._idle or not self.fits(spec):
            self._misses.inc()
            return None
        sandbox_id = next(iter(self._idle))
        watcher = self._idle.pop(sandbox_id)  # before any await: no two claims get one instance
        if watcher is not None:
            watcher.cancel()
        if not self._idle and self._remembered_peak(now):  # the pool was not too large: keep its size
            self._peak_at = now
        try:
            await self._adapt(sandbox_id, spec)
        except Exception as e:  # the caller spawns instead: a claim never fails a create
            log.warning("sandbox pool: instance %s could not take its limits: %s", sandbox_id, e)
            await asyncio.shield(self._discard(sandbox_id))
            self._misses.inc()
            return None
        except BaseException:
            await asyncio.shield(self._discard(sandbox_id))
            raise
        self._hits.inc()
        return sandbox_id

    def _remembered_peak(self, now: float) -> int:
        return self._peak if now - self._peak_at <= BURST_MEMORY_S else 0

    async def make_room(self) -> None:
        """Stop the oldest idle instances the node has no room for: called by a sandbox or function
        instance about to spawn (it holds its slot already), so that idle instances never take a
        live one's place."""
        while self._idle and len(self._idle) > self.room():
            await self._stop_oldest()

    async def _adapt(self, sandbox_id: str, spec: SandboxSpec) -> None:
        ours = self._spec
        if (spec.cpu_millis, spec.memory_bytes) != (ours.cpu_millis, ours.memory_bytes):
            await self._driver.set_limits(sandbox_id, spec.cpu_millis, spec.memory_bytes, spec.pids_max)

    # -- refills ---------------------------------------------------------------------------------

    async def run(self, started: asyncio.Event | None = None) -> None:
        """Keep the pool full until cancelled; idle instances are watched for dying meanwhile."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            if started is not None:
                started.set()
            while True:
                now = self._clock.now()
                await self.trim_once(now) or await self.refill_once(now)
                await self._wait(self._due_in(self._clock.now()))

    async def refill_once(self, now: float) -> bool:
        """Start one instance if the pool is short, quiet and not backing off. True if it did."""
        if len(self._idle) + self._filling >= self.target(now) or self._due_in(now) != 0.0:
            return False
        sandbox_id = self._new_id()
        self._filling += 1
        try:
            await self._driver.start(replace(self._spec, sandbox_id=sandbox_id))
        except AgentcellError as e:
            self._retry_at, self._retry_s = now + self._retry_s, min(self._retry_s * 2, RETRY_S[1])
            log.warning("sandbox pool: a refill failed (next try in %.0f s): %s", self._retry_s, e)
            return False
        finally:
            self._filling -= 1
        self._retry_s = RETRY_S[0]
        if self._closed or len(self._idle) >= self.room():  # creates took the room meanwhile
            await self._discard(sandbox_id)
            return False
        self._idle[sandbox_id] = self._watch(sandbox_id)
        return True

    async def trim_once(self, now: float) -> bool:
        """Stop the oldest idle instance if the pool holds more than it means to: at once if live
        sandboxes need its room, else (the burst it grew for is forgotten) once the node is quiet.
        True if it did."""
        if self._closed or len(self._idle) <= self.target(now):
            return False
        if len(self._idle) <= self.room() and now < self._last_create + self._quiet_s:
            return False
        await self._stop_oldest()
        return True

    async def _stop_oldest(self) -> None:
        sandbox_id = next(iter(self._idle))
        watcher = self._idle.pop(sandbox_id)
        if watcher is not None:
            watcher.cancel()
        await self._discard(sandbox_id)

    def room_freed(self) -> None:
        """A live sandbox or function instance ended (called by the node's capacity): the pool may
        refill into its room."""
        self._changed.set()

    def _due_in(self, now: float) -> float | None:
        """Seconds until the pool may start or stop an instance; None when there is nothing to do
        until a create comes (or the pool is closed)."""
        if self._closed:
            return None
        held, target = len(self._idle) + self._filling, self.target(now)
        if held == target:  # full; wake when the remembered burst is forgotten, if it matters
            return self._peak_at + BURST_MEMORY_S - now if target > self.size else None
        quiet_in = self._last_create + self._quiet_s - now
        if held > target:
            return 0.0 if len(self._idle) > self.room() else max(0.0, quiet_in)
        return max(0.0, quiet_in, self._retry_at - now)

    async def _wait(self, delay_s: float | None) -> None:
        """Sleep `delay_s` (waiting for a quiet node), or while the pool is full until something
        changes (a claim), at most `delay_s` (until its remembered burst is forgotten)."""
        self._changed.clear()
        if delay_s is not None and delay_s <= 0:
            return
        if delay_s is not None and len(self._idle) + self._filling != self.target(self._clock.now()):
            await asyncio.sleep(delay_s)
            return
        # (not asyncio.wait_for: on 3.11 it can swallow a cancellation that meets a set event)
        timer = None if delay_s is None else asyncio.get_running_loop().call_later(delay_s, self._changed.set)
        try:
            await self._changed.wait()
        finally:
            if timer is not None:
                timer.cancel()

    def _watch(self, sandbox_id: str) -> asyncio.Task[None] | None:
        if self._tasks is None:
            return None
        return self._tasks.create_task(self._watch_idle(sandbox_id), name=f"pooled {sandbox_id}")

    async def _watch_idle(self, sandbox_id: str) -> None:
        """An idle instance that dies on its own is removed (and its remains with it)."""
        with contextlib.suppress(NotFound):
            await self._driver.wait_exited(sandbox_id)
        if self._idle.pop(sandbox_id, False) is not False:
            log.warning("sandbox pool: idle instance %s exited on its own", sandbox_id)
            await self._discard(sandbox_id)
            self._changed.set()

    # -- shutdown --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop every idle instance; refills still starting stop themselves when they finish."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for watcher in idle.values():
            if watcher is not None:
                watcher.cancel()
        await asyncio.gather(*(self._discard(i) for i in idle))

    async def _discard(self, sandbox_id: str) -> None:
        try:
            await self._driver.stop(sandbox_id, grace_s=0)
        except Exception:
            log.exception("sandbox pool: could not stop instance %s", sandbox_id)

    # -- metrics ---------------------------------------------------------------------------------

    def _register(self, registry: Registry) -> None:
        registry.gauge(
            "agentcell_sandbox_pool_ready",
            "Pre-started sandboxes waiting for a create (AGENTCELL_SANDBOX_POOL)",
            (),
            lambda: [((), float(len(self._idle)))],
        )
        registry.gauge(
            "agentcell_sandbox_pool_target",
            "Idle sandboxes the pool means to hold: AGENTCELL_SANDBOX_POOL, or the most creates in flight"
            " at once recently, up to AGENTCELL_SANDBOX_POOL_MAX and the room AGENTCELL_MAX_SANDBOXES"
            " leaves beside live sandboxes and function instances",
            (),
            lambda: [((), float(self.target(self._clock.now())))],
        )
        claims = registry.counter(
            "agentcell_sandbox_pool_claims_total",
            "Sandbox creates served by the pool (hit) or by a new spawn (miss)",
            ("result",),
        )
        self._hits, self._misses = claims.labels("hit"), claims.labels("miss")
