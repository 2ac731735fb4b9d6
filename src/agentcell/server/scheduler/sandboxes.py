"""SandboxService: the sandbox lifecycle on this node — create, find, renew, expire, kill.

Owns the in-memory registry of sandboxes and their processes. The app's lifespan runs `run()`,
which holds the background work (the expiry loop and one watcher per sandbox) in one TaskGroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agentcell.errors import InvalidArgument, NotFound, NotRunning, QuotaExceeded, Unavailable
from agentcell.protocol.commands import CommandRequest
from agentcell.protocol.sandboxes import SandboxCreate, SandboxInfo, SandboxState
from agentcell.server.clock import Clock
from agentcell.server.sandbox.driver import ExecSpec, SandboxDriver, SandboxFiles, SandboxSpec
from agentcell.server.scheduler.processes import Event, ManagedProcess, ProcessTable

log = logging.getLogger(__name__)


def new_sandbox_id() -> str:
    return "sbx_" + secrets.token_hex(8)


@dataclass(slots=True)
class Sandbox:
    id: str
    request: SandboxCreate
    created_at: float
    expires_at: float
    state: SandboxState = "running"
    processes: ProcessTable = field(default_factory=ProcessTable)

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
            created_at=datetime.fromtimestamp(self.created_at, UTC),
            expires_at=datetime.fromtimestamp(self.expires_at, UTC),
        )

    def matches(self, metadata: dict[str, str], state: SandboxState | None) -> bool:
        if state is not None and self.state != state:
            return False
        return all(self.request.metadata.get(k) == v for k, v in metadata.items())


TEMPLATES = frozenset({"base"})


class SandboxService:
    def __init__(
        self, driver: SandboxDriver, clock: Clock, *, max_sandboxes: int, pids_max: int, stop_grace_s: float
    ) -> None:
        self._driver = driver
        self._clock = clock
        self._max = max_sandboxes
        self._pids_max = pids_max
        self._grace_s = stop_grace_s
        self._sandboxes: dict[str, Sandbox] = {}
        self._starting = 0
        self._tasks: asyncio.TaskGroup | None = None

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
            while True:
                await asyncio.sleep(reap_interval_s)
                await self.expire_once(self._clock.now())

    async def aclose(self) -> None:
        """Kill every sandbox (server shutdown)."""
        for sandbox in list(self._sandboxes.values()):
            await self._end(sandbox)

    # -- sandboxes --------------------------------------------------------------------------------

    async def create(self, request: SandboxCreate) -> Sandbox:
        if request.template not in TEMPLATES:
            raise InvalidArgument(
                f"unknown template {request.template!r}; available: {', '.join(sorted(TEMPLATES))}"
            )
        if len(self._sandboxes) + self._starting >= self._max:
            raise QuotaExceeded(
                f"this node runs at most {self._max} sandboxes; kill one first", retry_after_s=1
            )
        now = self._clock.now()
        sandbox = Sandbox(new_sandbox_id(), request, created_at=now, expires_at=now + request.timeout_s)
        self._starting += 1
        try:
            await self._driver.start(self._spec(sandbox))
        finally:
            self._starting -= 1
        self._sandboxes[sandbox.id] = sandbox
        self._watch(sandbox)
        log.info("sandbox %s started", sandbox.id)
        return sandbox

    def _spec(self, sandbox: Sandbox) -> SandboxSpec:
        req = sandbox.request
        return SandboxSpec(
            sandbox_id=sandbox.id,
            template=req.template,
            cpu_millis=max(10, int(req.cpu * 1000)),
            memory_bytes=req.memory_mb << 20,
            disk_bytes=req.disk_mb << 20,
            pids_max=self._pids_max,
        )

    def _watch(self, sandbox: Sandbox) -> None:
        if self._tasks is None:
            raise Unavailable("the server is not accepting sandboxes (starting up or shutting down)")
        self._tasks.create_task(self._watch_instance(sandbox), name=f"watch {sandbox.id}")

    async def _watch_instance(self, sandbox: Sandbox) -> None:
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
        if sandbox is None:
            raise NotFound(f"sandbox {sandbox_id!r} not found (it may have ended)")
        return sandbox

    def running(self, sandbox_id: str) -> Sandbox:
        sandbox = self.get(sandbox_id)
        if sandbox.state != "running":
            raise NotRunning(f"sandbox {sandbox_id} is {sandbox.state}")
        return sandbox

    def find(self, metadata: dict[str, str], state: SandboxState | None = None) -> list[Sandbox]:
        found = [s for s in self._sandboxes.values() if s.matches(metadata, state)]
        return sorted(found, key=lambda s: s.created_at)

    def set_timeout(self, sandbox_id: str, timeout_s: int) -> Sandbox:
        sandbox = self.running(sandbox_id)
        sandbox.expires_at = self._clock.now() + timeout_s
        return sandbox

    async def kill(self, sandbox_id: str) -> None:
        await self._end(self.get(sandbox_id))

    async def expire_once(self, now: float) -> list[str]:
        """End every sandbox whose deadline has passed. Returns their ids."""
        expired = [s for s in list(self._sandboxes.values()) if s.state == "running" and s.expires_at <= now]
        for sandbox in expired:
            log.info("sandbox %s: timeout reached", sandbox.id)
            try:
                await self._end(sandbox)
            except Exception:
                log.exception("sandbox %s: failed to stop after its timeout", sandbox.id)
        return [s.id for s in expired]

    async def _end(self, sandbox: Sandbox) -> None:
        if sandbox.state != "running":
            return
        sandbox.state = "stopping"
        try:
            await self._driver.stop(sandbox.id, self._grace_s)
            await sandbox.processes.aclose()
        finally:
            sandbox.state = "ended"
            self._sandboxes.pop(sandbox.id, None)
            log.info("sandbox %s ended", sandbox.id)

    # -- commands and files ----------------------------------------------------------------------

    async def start_process(self, sandbox_id: str, request: CommandRequest) -> ManagedProcess:
        sandbox = self.running(sandbox_id)
        argv = request.full_argv()
        spec = ExecSpec(argv=argv, env={**sandbox.request.env, **request.env}, cwd=request.cwd)
        process = ManagedProcess(
            await self._driver.exec(sandbox.id, spec), argv, request.cwd, request.timeout_s
        )
        sandbox.processes.add(process)
        process.start()
        if request.stdin is not None:
            await process.write_stdin(request.stdin.encode(), close=True)
        elif not request.background:
            await process.write_stdin(b"", close=True)
        return process

    async def run_foreground(self, process: ManagedProcess, sandbox_id: str) -> AsyncIterator[Event]:
        """Events of a foreground command; the process is killed if the caller stops listening."""
        try:
            async for event in process.events():
                yield event
        finally:
            process.kill()
            with contextlib.suppress(NotFound):
                self.get(sandbox_id).processes.discard(process)

    def process(self, sandbox_id: str, key: str) -> ManagedProcess:
        return self.running(sandbox_id).processes.get(key)

    def processes(self, sandbox_id: str) -> list[ManagedProcess]:
        return self.running(sandbox_id).processes.all()

    def files(self, sandbox_id: str) -> SandboxFiles:
        return self._driver.files(self.running(sandbox_id).id)
