"""SandboxService: the sandbox lifecycle on this node — create, find, renew, expire, kill.

Owns the in-memory registry of sandboxes and their processes. The app's lifespan runs `run()`,
which holds the background work (the expiry loop and one watcher per sandbox) in one TaskGroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agentcell.errors import AgentcellError, InvalidArgument, NotFound, NotRunning, Unavailable
from agentcell.protocol.commands import CommandRequest, EndEvent
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.sandboxes import SandboxCreate, SandboxInfo, SandboxState
from agentcell.server.auth.names import DEFAULT_TENANT
from agentcell.server.auth.principal import acting_as, current_or_none
from agentcell.server.auth.quotas import QuotaGuard, unlimited
from agentcell.server.clock import Clock
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.interpreter.contexts import CodeContexts, Interpreter
from agentcell.server.meta.records import UsageRecord
from agentcell.server.observability.logs import bind as bind_log_ids
from agentcell.server.observability.telemetry import NullTelemetry, Telemetry
from agentcell.server.sandbox.driver import (
    ExecSpec,
    FileStat,
    ResourceUsage,
    SandboxDriver,
    SandboxFiles,
    SandboxSpec,
)
from agentcell.server.scheduler.file_changes import FileChanges, WriteChange
from agentcell.server.scheduler.metering import (
    ActivityMeter,
    LiveUsage,
    Owner,
    Resources,
    UsageLedger,
    cpu_since,
    taking_turns,
    usage_row,
)
from agentcell.server.scheduler.node_capacity import NodeCapacity
from agentcell.server.scheduler.processes import CommandLimits, Event, ManagedProcess, ProcessTable
from agentcell.server.scheduler.sandbox_order import OrderKey, SandboxOrder
from agentcell.server.scheduler.sandbox_pool import SandboxPool
from agentcell.server.scheduler.traffic import PrivateTraffic
from agentcell.server.templates.service import ResolvedTemplate, TemplateService

log = logging.getLogger(__name__)

ENDING_AT_ONCE = 16
"""sandboxes ended at once at their timeouts and at shutdown: a stop may take its grace (SIGTERM,
then SIGKILL) and a pause an upload, and neither may hold the next sandbox, running and billed.
One at a time, the last of ten whose command ignored SIGTERM ended 20.8 s after its deadline (the
first 2.8 s), and a server with ten of them took 20.3 s to shut down (bench/RESULTS.md, session
18)."""

STOPPED_UNDER_COMMAND = "the sandbox stopped while the command ran (killed, paused or past its timeout)"


def new_sandbox_id() -> str:
    return "sbx_" + secrets.token_hex(8)


def _requesting_tenant() -> str:
    principal = current_or_none()
    return principal.tenant if principal is not None else DEFAULT_TENANT


def _visible(sandbox: Sandbox) -> bool:
    """A request sees its own tenant's sandboxes only (a foreign id is not found); the server's
    own background work sees all."""
    principal = current_or_none()
    return principal is None or principal.tenant == sandbox.tenant


@dataclass(slots=True)
class Sandbox:
    id: str
    request: SandboxCreate
    created_at: float
    expires_at: float
    started_at: float = 0.0  # this run's (a resume keeps created_at)
    state: SandboxState = "running"
    pausing: bool = False  # its files are being saved: writes from now on would miss the snapshot
    file_changes: FileChanges = field(default_factory=FileChanges)
    """held by a snapshot of it while it saves: API changes to its files wait (file_changes.py)"""
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """set once it stops running (killed, paused, past its timeout): what waits on it ends"""

    @property
    def is_running(self) -> bool:
        return self.state == "running" and not self.pausing

    processes: ProcessTable = field(default_factory=ProcessTable)
    meter: ActivityMeter = field(default_factory=lambda: ActivityMeter(0.0))
    cpu_ns_metered: int = 0
    tenant: str = DEFAULT_TENANT

    def info(self) -> SandboxInfo:
        req = self.request
        return SandboxInfo(
            id=self.id,
            template=req.template,
            state=self.state,
            env_keys=sorted(req.env),
            metadata=dict(req.metadata),
            cpu=req.cpu,
            memory_mb=req.memory_mb,
            disk_mb=req.disk_mb,
            network=req.network,
            ports_host=req.ports_host,
            on_timeout=req.on_timeout,
            auto_resume=req.auto_resume,
            created_at=datetime.fromtimestamp(self.created_at, UTC),
            expires_at=datetime.fromtimestamp(self.expires_at, UTC),
        )

    def matches(self, metadata: dict[str, str], state: SandboxState | None) -> bool:
        if state is not None and self.state != state:
            return False
        return all(self.request.metadata.get(k) == v for k, v in metadata.items())


class SandboxService:
    def __init__(
        self,
        driver: SandboxDriver,
        clock: Clock,
        *,
        pids_max: int,
        stop_grace_s: float,
        templates: TemplateService | None = None,
        interpreter: Interpreter | None = None,
        ledger: UsageLedger | None = None,
        usage_interval_s: float = 60.0,
        telemetry: Telemetry | None = None,
        quotas: QuotaGuard | None = None,
        pool: SandboxPool | None = None,
        command_limits: CommandLimits | None = None,
        capacity: NodeCapacity | None = None,
        max_sandboxes: int | None = None,
        traffic_secret: bytes | None = None,
    ) -> None:
        """`capacity`: the node's, shared with the function scheduler (app.py); without it the
        service has one of `max_sandboxes` (unlimited: None) to itself. `traffic_secret` derives
        the traffic access tokens (a random one when not given)."""
        self._driver = driver
        self._pool = pool
        self._command_limits = command_limits or CommandLimits()
        self._capacity = capacity or NodeCapacity(max_sandboxes)
        if pool is not None:  # idle instances live in the room the node's slots leave
            pool.room = self._capacity.room
            self._capacity.spare = pool
        self._quotas = quotas or unlimited()
        self._telemetry = telemetry or NullTelemetry()
        self._ledger = ledger
        self._usage_interval_s = usage_interval_s
        self._templates = templates
        self._interpreter = interpreter
        self._clock = clock
        self._pids_max = pids_max
        self._grace_s = stop_grace_s
        self._sandboxes: dict[str, Sandbox] = {}
        self._order: SandboxOrder[Sandbox] = SandboxOrder()
        """`_sandboxes` in the order of lists, changed with it"""
        self._tasks: asyncio.TaskGroup | None = None
        self.on_timeout: Callable[[Sandbox], Awaitable[bool]] | None = None
        """Called for a sandbox past its deadline; True: it was dealt with (paused), do not kill it."""
        self.is_paused: Callable[[str], bool] = lambda sandbox_id: False
        """Whether the caller's sandbox of this id is paused (set by scheduler/sandbox_pause.py)."""
        self.traffic = PrivateTraffic(self._live_or_paused, traffic_secret)
        """the private sandboxes (every API's), which the gateway checks each port request by"""

    # -- lifecycle of the service ---------------------------------------------------------------

    async def run(self, reap_interval_s: float, started: asyncio.Event | None = None) -> None:
        """Background work until cancelled: expiry ticks and per-sandbox death watchers."""
        reaped = await self._driver.reap_orphans()
        if reaped:
            log.info("reaped %d instance(s) left by an earlier server: %s", len(reaped), reaped)
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            if started is not None:
                started.set()
            metered_at = self._clock.now()
            while True:
                await asyncio.sleep(reap_interval_s)
                await self.expire_once(self._clock.now())
                if self._clock.now() - metered_at >= self._usage_interval_s:
                    metered_at = self._clock.now()
                    await self.meter_once()

    async def aclose(self) -> None:
        """Kill every sandbox (server shutdown), ENDING_AT_ONCE at a time; the first failure is
        raised once every sandbox's end has been tried."""
        ends = await _side_by_side(list(self._sandboxes.values()), self._end)
        for outcome in ends:
            if isinstance(outcome, BaseException):
                raise outcome

    # -- sandboxes --------------------------------------------------------------------------------

    async def create(
        self, request: SandboxCreate, *, sandbox_id: str | None = None, created_at: float | None = None
    ) -> Sandbox:
        """A new sandbox; `sandbox_id` and `created_at` are given only by a resume
        (scheduler/sandbox_pause.py). QuotaExceeded when the node runs its most sandboxes and
        function instances (NodeCapacity) or the tenant its quota."""
        now = self._clock.now()
        poolable = sandbox_id is None  # a resume keeps its id: it never takes a pooled instance
        sandbox_id = sandbox_id or new_sandbox_id()
        expires_at = now + request.timeout_s
        sandbox = Sandbox(sandbox_id, request, created_at or now, expires_at, started_at=now)
        sandbox.tenant = _requesting_tenant()
        sandbox.meter.since = now
        sandbox.processes = self._command_limits.table()
        template = self._hold(sandbox)
        try:
            await self._start_instance(sandbox, template, poolable)
        except BaseException:
            self._unhold(sandbox)
            raise
        if request.ports == "private":  # before its id can be known: every create-like path comes here
            self.traffic.restrict(sandbox.id)
        self._sandboxes[sandbox.id] = sandbox
        self._order.add(sandbox)
        self._watch(sandbox)
        if request.code_kernel:
            await self._prestart_kernel(sandbox)
        log.info("sandbox %s started", sandbox.id)
        return sandbox

    async def _start_instance(self, sandbox: Sandbox, template: ResolvedTemplate, poolable: bool) -> None:
        """Claim a pooled instance (the sandbox takes its id) or start a new one."""
        spec = self._spec(sandbox, template)
        if self._pool is None:
            await self._spawn(sandbox, spec)
            return
        if not poolable:
            await self._pool.make_room()
            await self._spawn(sandbox, spec)
            return
        with self._pool.creating(spec):
            if (pooled := await self._pool.claim(spec)) is not None:
                sandbox.id = pooled
                return
            await self._pool.make_room()
            await self._spawn(sandbox, spec)

    async def _spawn(self, sandbox: Sandbox, spec: SandboxSpec) -> None:
        spawn_started = self._telemetry.now()
        await self._driver.start(spec)
        self._telemetry.phase("sandbox_spawn", spawn_started, sandbox.id)

    def _spec(self, sandbox: Sandbox, template: ResolvedTemplate) -> SandboxSpec:
        req = sandbox.request
        return SandboxSpec(
            sandbox_id=sandbox.id,
            template=req.template,
            cpu_millis=max(10, int(req.cpu * 1000)),
            memory_bytes=req.memory_mb << 20,
            disk_bytes=req.disk_mb << 20,
            pids_max=self._pids_max,
            env=dict(template.env),
            mounts=template.mounts,
            egress=EgressPolicy.from_wire(req.network),
        )

    def _hold(self, sandbox: Sandbox) -> ResolvedTemplate:
        """Count the sandbox against the node's capacity (from before its spawn: a start in
        progress holds its slot), its tenant's quotas and its template's users."""
        req = sandbox.request
        self._capacity.take("sandbox")
        try:
            self._quotas.hold(sandbox.tenant, "sandbox", req.cpu, req.memory_mb)
        except BaseException:
            self._capacity.give("sandbox")
            raise
        try:
            return self._acquire_template(req.template)
        except BaseException:
            self._quotas.release(sandbox.tenant, "sandbox", req.cpu, req.memory_mb)
            self._capacity.give("sandbox")
            raise

    def _unhold(self, sandbox: Sandbox) -> None:
        """Undo `_hold`, once the sandbox's instance is gone (or never started)."""
        req = sandbox.request
        self._release_template(req.template)
        self._quotas.release(sandbox.tenant, "sandbox", req.cpu, req.memory_mb)
        self._capacity.give("sandbox")  # (the pool may refill into its room)

    def _acquire_template(self, name: str) -> ResolvedTemplate:
        """The template's layer and env; counted as in use until the sandbox ends."""
        if self._templates is not None:
            return self._templates.acquire(name)
        if name != "base":
            raise NotFound(f"template {name!r} not found; available: base")
        return ResolvedTemplate("base")

    def _release_template(self, name: str) -> None:
        if self._templates is not None:
            self._templates.release(name)

    def _watch(self, sandbox: Sandbox) -> None:
        if self._tasks is None:
            raise Unavailable("the server is not accepting sandboxes (starting up or shutting down)")
        self._tasks.create_task(self._watch_instance(sandbox), name=f"watch {sandbox.id}")

    async def _watch_instance(self, sandbox: Sandbox) -> None:
        bind_log_ids(instance=sandbox.id)
        with contextlib.suppress(NotFound):
            await self._driver.wait_exited(sandbox.id)
        if sandbox.state == "running":
            log.warning("sandbox %s: its instance exited on its own", sandbox.id)
        try:
            await self._end(sandbox)
        except Exception:
            log.exception("sandbox %s: cleanup after exit failed", sandbox.id)

    def get(self, sandbox_id: str) -> Sandbox:
        sandbox = self._sandboxes.get(sandbox_id)
        if sandbox is None or not _visible(sandbox):
            raise NotFound(f"sandbox {sandbox_id!r} not found (it may have ended)")
        return sandbox

    def _live_or_paused(self, sandbox_id: str) -> bool:
        """Of any tenant (PrivateTraffic forgets the others)."""
        if sandbox_id in self._sandboxes:
            return True
        with acting_as(None):
            return self.is_paused(sandbox_id)

    def running(self, sandbox_id: str) -> Sandbox:
        if sandbox_id not in self._sandboxes and self.is_paused(sandbox_id):
            raise NotRunning(f"sandbox {sandbox_id} is paused; resume it first (POST .../resume)")
        sandbox = self.get(sandbox_id)
        if sandbox.state != "running":
            raise NotRunning(f"sandbox {sandbox_id} is {sandbox.state}")
        return sandbox

    def taking_work(self, sandbox_id: str) -> Sandbox:
        """A running sandbox that is not being paused: a command or terminal started while its
        files are saved would run frozen, then be stopped, its effects missing from the snapshot."""
        sandbox = self.running(sandbox_id)
        if sandbox.pausing:
            raise NotRunning(f"sandbox {sandbox_id} is being paused; resume it once paused (POST .../resume)")
        return sandbox

    async def end_code_runs(self, because: str) -> None:
        """End every code run in every sandbox, saying `because` (graceful shutdown)."""
        if self._interpreter is not None:
            await self._interpreter.end_runs(because)

    def all(self) -> list[Sandbox]:
        """Every live sandbox, of every tenant (for the server's own bookkeeping, never an answer)."""
        return list(self._sandboxes.values())

    def held_by(self, tenant: str) -> int:
        """How many live sandboxes `tenant` has (whoever asks)."""
        return sum(s.tenant == tenant for s in self.all())

    def find(self, metadata: dict[str, str], state: SandboxState | None = None) -> list[Sandbox]:
        found = [s for s in self._sandboxes.values() if s.matches(metadata, state) and _visible(s)]
        return sorted(found, key=lambda s: s.created_at)

    def find_after(
        self, metadata: dict[str, str], state: SandboxState | None, after: OrderKey | None
    ) -> Iterator[Sandbox]:
        """`find`'s sandboxes, ids breaking ties, from the first past (created_at, id) `after` when
        given; found as they are taken, so that a page reads only as far as it lists (finish with
        it before the next await: `SandboxOrder.after`)."""
        for sandbox in self._order.after(after):
            if sandbox.matches(metadata, state) and _visible(sandbox):
                yield sandbox

    def set_timeout(self, sandbox_id: str, timeout_s: int) -> Sandbox:
        sandbox = self.running(sandbox_id)
        sandbox.expires_at = self._clock.now() + timeout_s
        return sandbox

    async def set_network(self, sandbox_id: str, network: NetworkPolicy) -> Sandbox:
        """Replace a running sandbox's network policy at once (the driver cuts what the new one
        refuses); its request keeps it, so a pause and resume or a snapshot carries it on."""
        sandbox = self.taking_work(sandbox_id)
        await self._driver.set_egress(sandbox.id, EgressPolicy.from_wire(network))
        sandbox.request = sandbox.request.model_copy(update={"network": network})
        return sandbox

    async def kill(self, sandbox_id: str) -> None:
        await self._end(self.get(sandbox_id))

    async def expire_once(self, now: float) -> list[str]:
        """End every sandbox whose deadline has passed, ENDING_AT_ONCE at a time. Returns their
        ids."""
        expired = [s for s in list(self._sandboxes.values()) if s.state == "running" and s.expires_at <= now]
        await _side_by_side(expired, self._expire)
        self._telemetry.reaped("sandbox_timeout", len(expired))
        return [s.id for s in expired]

    async def _expire(self, sandbox: Sandbox) -> None:
        log.info("sandbox %s: timeout reached", sandbox.id)
        try:
            if self.on_timeout is not None and await self.on_timeout(sandbox):
                return
            await self._end(sandbox)
        except Exception:
            log.exception("sandbox %s: failed to stop after its timeout", sandbox.id)

    async def _end(self, sandbox: Sandbox) -> None:
        if sandbox.state != "running":
            return
        await self._meter(sandbox)
        sandbox.state = "stopping"
        sandbox.stopping.set()
        try:
            await self._driver.stop(sandbox.id, self._grace_s)
            await sandbox.processes.aclose()
            if self._interpreter is not None:
                await self._interpreter.discard(sandbox.id)
        finally:
            sandbox.state = "ended"
            if self._sandboxes.pop(sandbox.id, None) is not None:
                self._order.discard(sandbox)
                self._unhold(sandbox)
            log.info("sandbox %s ended", sandbox.id)

    # -- commands and files ----------------------------------------------------------------------

    async def start_process(self, sandbox_id: str, request: CommandRequest) -> ManagedProcess:
        if request.pty is not None:  # terminals have their own service (scheduler/terminals.py)
            raise InvalidArgument("start a command with `pty` through the terminals service")
        sandbox = self.taking_work(sandbox_id)
        argv = request.full_argv()
        spec = ExecSpec(argv=argv, env={**sandbox.request.env, **request.env}, cwd=request.cwd)
        stdin = None if request.stdin is None else request.stdin.encode()
        with sandbox.processes.starting(stdin_bytes=len(stdin or b"")):  # 429 past its budgets
            process = ManagedProcess(
                await self._driver.exec(sandbox.id, spec), argv, request.cwd, request.timeout_s
            )
            sandbox.processes.add(process)
        if stdin is not None:
            process.start(stdin=stdin)
        else:  # a foreground command reads an empty stdin; a background one's stays open
            process.start(stdin=None if request.background else b"")
        self._count_activity(sandbox, process)
        return process

    async def run_foreground(self, process: ManagedProcess, sandbox_id: str) -> AsyncIterator[Event]:
        """Events of a foreground command; the process is killed if the caller stops listening.
        An `end` that the sandbox's own end (kill, pause, timeout) caused says so in its `error`,
        so that it is not taken for the command exiting on SIGTERM by itself."""
        sandbox = self.get(sandbox_id)
        try:
            async for event in process.events(holder=True):
                if isinstance(event, EndEvent) and event.error is None and not sandbox.is_running:
                    event = event.model_copy(update={"error": STOPPED_UNDER_COMMAND})
                yield event
        finally:
            process.kill()
            with contextlib.suppress(NotFound):
                self.get(sandbox_id).processes.discard(process)

    def process(self, sandbox_id: str, key: str) -> ManagedProcess:
        return self.running(sandbox_id).processes.get(key)

    def processes(self, sandbox_id: str) -> list[ManagedProcess]:
        return self.running(sandbox_id).processes.all()

    # -- metering --------------------------------------------------------------------------------

    def _count_activity(self, sandbox: Sandbox, process: ManagedProcess) -> None:
        """The sandbox is active while the process runs."""
        sandbox.meter.begin(self._clock.now())
        if self._tasks is None:
            return

        async def until_exit() -> None:
            try:
                await process.wait()
            finally:
                sandbox.meter.end(self._clock.now())

        self._tasks.create_task(until_exit(), name=f"meter {sandbox.id}")

    async def meter_once(self) -> int:
        """Write every running sandbox's usage since it was last metered to the ledger."""
        async for sandbox in taking_turns(self._running()):
            if sandbox.state == "running":  # (its end, meanwhile, metered it last)
                await self._meter(sandbox)
        return await self._ledger.write() if self._ledger is not None else 0

    async def live_usage(self) -> LiveUsage:
        """The rows `meter_once` would write now, made when called, without taking a meter or
        moving a CPU mark (CPU from each running sandbox's cgroup counter, read here)."""
        if self._ledger is None:
            return lambda: []
        counters = {s.id: await self._counters(s) async for s in taking_turns(self._running())}

        def rows() -> list[UsageRecord]:
            now = self._clock.now()
            return [self._usage_row(s, counters.get(s.id), now, advance=False) for s in self._running()]

        return rows

    def _running(self) -> list[Sandbox]:
        return [s for s in self._sandboxes.values() if s.state == "running"]

    async def _counters(self, sandbox: Sandbox) -> ResourceUsage | None:
        try:
            return await self._driver.usage(sandbox.id)
        except AgentcellError:
            return None  # gone meanwhile: its wall time still counts

    async def _meter(self, sandbox: Sandbox) -> None:
        if self._ledger is None:
            return
        used = await self._counters(sandbox)
        self._ledger.add([self._usage_row(sandbox, used, self._clock.now(), advance=True)])

    def _usage_row(
        self, sandbox: Sandbox, used: ResourceUsage | None, now: float, *, advance: bool
    ) -> UsageRecord:
        """The sandbox's usage since it was last metered; `advance`: take it (it is being queued)."""
        cpu_s, peak = 0.0, 0
        if used is not None:
            cpu_s, peak = cpu_since(used.cpu_ns, sandbox.cpu_ns_metered), used.memory_peak_bytes
            if advance:
                sandbox.cpu_ns_metered = used.cpu_ns
        activity = sandbox.meter.take(now) if advance else sandbox.meter.peek(now)
        owner = Owner(sandbox.tenant, "sandbox", sandbox_id=sandbox.id)
        resources = Resources(sandbox.request.cpu, sandbox.request.memory_mb << 20)
        return usage_row(owner, now - activity.wall_s, now, activity, resources, cpu_s, peak)

    # -- code contexts ---------------------------------------------------------------------------

    def code(self, sandbox_id: str) -> CodeContexts:
        """The code contexts of a running sandbox that is not being paused (kernels get the
        sandbox's env, like commands): a run started while its files are saved would run frozen,
        or not at all, then end with the sandbox, its effects missing from the snapshot."""
        sandbox = self.taking_work(sandbox_id)
        if self._interpreter is None:
            raise Unavailable("this server runs no code interpreter")
        return self._interpreter.contexts(sandbox.id, sandbox.request.env, sandbox.meter)

    async def _prestart_kernel(self, sandbox: Sandbox) -> None:
        try:
            await self.code(sandbox.id).prestart()
        except BaseException:
            await self._end(sandbox)
            raise

    def files(self, sandbox_id: str) -> SandboxFiles:
        sandbox = self.running(sandbox_id)
        return LiveFiles(self._driver.files(sandbox.id), sandbox)


class LiveFiles:
    """A running sandbox's files, for its API: a write that its end or its pause overtakes fails
    with NotRunning (409) instead of answering 200 for a file that went with the instance, or that
    its snapshot does not hold. It also stops reading the upload as soon as that happens. Changes
    wait while a snapshot of the sandbox is saved (FileChanges): they come after it, never half
    in it. A pause holds the same gate, so the changes in flight finish before it saves; those
    that begin after it did (a write's start or commit, mkdir, rename, remove) fail instead of
    waiting: the instance stops after the save, so they would have nowhere to land."""

    def __init__(self, files: SandboxFiles, sandbox: Sandbox) -> None:
        self._files = files
        self._sandbox = sandbox

    @property
    def owner(self) -> tuple[int, int] | None:
        return self._files.owner

    async def open_dir(self, path: str) -> int:
        return await self._files.open_dir(path)

    async def stat(self, path: str) -> FileStat:
        return await self._files.stat(path)

    async def list(self, path: str, depth: int = 1) -> list[FileStat]:
        return await self._files.list(path, depth)

    def read(self, path: str, chunk_bytes: int = 1 << 20) -> AsyncGenerator[bytes, None]:
        return self._files.read(path, chunk_bytes)

    async def write(self, path: str, chunks: AsyncIterable[bytes]) -> FileStat:
        change = WriteChange(self._sandbox.file_changes)
        try:
            await self._write_turn(change)  # its start: the driver makes the temp file and its directories
            written = await self._files.write(path, self._while_live(chunks, change))
        finally:
            change.leave()
        self._check_ended(_WRITE_UNDONE)  # its commit was in before any pause began: the pause saved it
        return written

    async def make_dir(self, path: str) -> FileStat:
        async with self._change(f", so directory {path} was not made; make it"):
            return await self._files.make_dir(path)

    async def remove(self, path: str) -> None:
        async with self._change(f", so {path} was not removed; remove it"):
            await self._files.remove(path)

    async def rename(self, src: str, dst: str) -> FileStat:
        async with self._change(f", so {src} was not renamed; rename it"):
            return await self._files.rename(src, dst)

    @contextlib.asynccontextmanager
    async def _change(self, undone: str) -> AsyncIterator[None]:
        """One change, its turn at the gate; refused (`undone`) when the sandbox is pausing or
        ended, both before it waits for its turn and once it has it."""
        self._check_live(undone)
        async with self._sandbox.file_changes.change():
            self._check_live(undone)
            yield

    async def _write_turn(self, change: WriteChange) -> None:
        """A write's turn at the gate, for its start or its commit, refused as `_change` is."""
        self._check_live(_WRITE_UNDONE)
        await change.enter()
        self._check_live(_WRITE_UNDONE)

    async def _while_live(self, chunks: AsyncIterable[bytes], change: WriteChange) -> AsyncIterator[bytes]:
        """The body, outside the gate (it fills a temp file); when it has all been given, the
        write's turn for its commit, which the driver makes next."""
        change.leave()
        async for chunk in chunks:
            self._check_live(_WRITE_UNDONE)
            yield chunk
        await self._write_turn(change)

    def _check_live(self, undone: str) -> None:
        """Refuse a change once the sandbox is pausing or ended; `undone` follows "sandbox … was
        paused" (or "ended") in the error: what was not done, and what to do again."""
        if self._sandbox.pausing:
            raise self._not_running("was paused", undone)
        self._check_ended(undone)

    def _check_ended(self, undone: str) -> None:
        if self._sandbox.state != "running":
            raise self._not_running("ended", undone)

    def _not_running(self, happened: str, undone: str) -> NotRunning:
        return NotRunning(f"sandbox {self._sandbox.id} {happened}{undone} again once the sandbox runs")


_WRITE_UNDONE = " while the file was written, so it was not kept; write it"


async def _side_by_side(
    sandboxes: list[Sandbox], end: Callable[[Sandbox], Awaitable[None]]
) -> list[BaseException | None]:
    """`end` each sandbox, ENDING_AT_ONCE at a time; each one's outcome (None or its exception)."""
    room = asyncio.Semaphore(ENDING_AT_ONCE)

    async def one(sandbox: Sandbox) -> None:
        async with room:
            await end(sandbox)

    return await asyncio.gather(*(one(sandbox) for sandbox in sandboxes), return_exceptions=True)
