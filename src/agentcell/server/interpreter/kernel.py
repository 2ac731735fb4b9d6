"""What a context needs from a kernel, and the sandbox process every kernel kind stands on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from agentcell.server.interpreter.wire import KernelMessage
from agentcell.server.sandbox.driver import ExecSpec, ExitStatus, SandboxDriver, SandboxProcess

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20
GROUP_KILL_TIMEOUT_S = 2.0


class KernelExited(Exception):
    """The kernel process ended (crashed, was killed, or the sandbox went)."""


@dataclass(slots=True)
class Pending:
    """One execution in flight: its request id and how far its answer has come."""

    msg_id: str
    replied: bool = False
    idle: bool = True
    idle_deadline: float = 0.0

    @property
    def done(self) -> bool:
        return self.replied and self.idle


class Kernel(Protocol):
    """A started kernel. `CodeContext` is the only caller; it runs one execution at a time."""

    language: str

    @property
    def is_alive(self) -> bool: ...

    @property
    def host_pid(self) -> int | None:
        """The kernel process as the node sees it (None before start)."""
        ...

    async def start(self) -> None:
        """Return once the kernel answers requests; raise Unavailable (and leave nothing) if not."""
        ...

    async def send(self, code: str, env: Mapping[str, str]) -> Pending:
        """Submit code; its messages then come from `receive`."""
        ...

    async def receive(self, pending: Pending, timeout_s: float | None) -> KernelMessage | None:
        """The next message of `pending` (its `execute_reply` last), None when `timeout_s` passes
        first. Raises KernelExited when the process is gone."""
        ...

    def end_execution(self) -> None:
        """The execution `send` began is over for its caller (done, timed out or abandoned):
        output that still comes before the next `send` may be dropped as it arrives."""
        ...

    async def interrupt(self) -> None:
        """SIGINT to the kernel's process group, as Jupyter does for local kernels."""
        ...

    async def aclose(self) -> None:
        """Kill the process (if alive), close every socket and task. Idempotent."""
        ...


class CommandSlots(Protocol):
    """The server-wide budget of commands at once (scheduler/command_budget.py's CommandBudget),
    which kernels share with every sandbox's commands: each slot stands for FDS_PER_COMMAND of the
    server's file descriptors."""

    def take(self) -> None:
        """One slot, or Unavailable (503) when the server is at its limit."""
        ...

    def take_unchecked(self) -> None:
        """One slot that is never refused (a short control command that must run)."""
        ...

    def give(self) -> None: ...


@dataclass(slots=True)
class SlotHold:
    """The slots one kernel holds: taken, all or none, before its process starts; given back once
    it is closed (its process reaped, its pipes, pidfd and sockets closed)."""

    budget: CommandSlots | None
    held: int = 0

    def take(self, count: int) -> None:
        """`count` more slots, or Unavailable with none of them taken."""
        if self.budget is None:
            return
        try:
            for _ in range(count):
                self.budget.take()
                self.held += 1
        except BaseException:
            self.give()
            raise

    def give(self) -> None:
        """Every slot held (idempotent)."""
        held, self.held = self.held, 0
        if self.budget is not None:
            for _ in range(held):
                self.budget.give()


@dataclass(slots=True)
class SandboxLink:
    """How a kernel reaches its sandbox: the driver, the sandbox id and the server's command
    budget (None: no server-wide cap)."""

    driver: SandboxDriver
    sandbox_id: str
    budget: CommandSlots | None = None

    def hold(self) -> SlotHold:
        """An empty hold on the budget, for one kernel process to fill before it starts."""
        return SlotHold(self.budget)

    async def exec(self, spec: ExecSpec) -> SandboxProcess:
        return await self.driver.exec(self.sandbox_id, spec)

    async def signal_group(self, pid: int, signum: int) -> None:
        """Signal the process group led by in-sandbox `pid` (every kernel is a session leader).
        Done from inside the sandbox, so a recycled pid can only name the sandbox's own processes.
        The short `kill` holds a slot of the budget while it runs, never refused: an interrupt or a
        kernel's stop must work when the server is at its limit."""
        name = signal.Signals(signum).name.removeprefix("SIG")
        argv = ["/bin/bash", "-c", 'kill -s "$1" -- "-$2" 2>/dev/null', "signal", name, str(pid)]
        if self.budget is not None:
            self.budget.take_unchecked()
        try:
            process = await self.exec(ExecSpec(argv=argv, cwd="/"))
            await process.close_stdin()
            await asyncio.gather(process.stdout.read(), process.stderr.read())
            await process.wait()
        finally:
            if self.budget is not None:
                self.budget.give()


@dataclass(slots=True)
class KernelProcess:
    """The kernel's sandbox process and a task that notices its exit."""

    process: SandboxProcess
    link: SandboxLink
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    status: ExitStatus | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def watch(self, *, drain_stdout: bool) -> None:
        self._tasks.append(asyncio.create_task(self._wait(), name=f"kernel pid {self.process.pid}"))
        if drain_stdout:
            self._tasks.append(asyncio.create_task(self._drain(self.process.stdout, None)))
            self._tasks.append(asyncio.create_task(self._drain(self.process.stderr, self.stderr_tail)))

    async def _wait(self) -> None:
        self.status = await self.process.wait()
        self.exited.set()

    @staticmethod
    async def _drain(stream: asyncio.StreamReader, tail: deque[str] | None) -> None:
        while line := await stream.readline():
            if tail is not None:
                tail.append(line.decode(errors="replace").rstrip()[:500])

    def describe_exit(self) -> str:
        """How the process ended (when known) and the last lines of its stderr, in parentheses."""
        parts = [_describe_status(self.status)] if self.status is not None else []
        tail = "; ".join(line for line in self.stderr_tail if line)
        parts += [f"stderr: {tail[-800:]}"] if tail else []
        return f" ({'; '.join(parts)})" if parts else ""

    async def aclose(self) -> None:
        """Kill the kernel's whole process group (what its code started too), then the kernel."""
        if not self.exited.is_set():
            with contextlib.suppress(Exception):  # the sandbox may be gone already
                async with asyncio.timeout(GROUP_KILL_TIMEOUT_S):
                    await self.link.signal_group(self.process.pid, signal.SIGKILL)
        self.process.send_signal(signal.SIGKILL)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self.process.wait()
        self.exited.set()


def _describe_status(status: ExitStatus) -> str:
    if status.signal is None:
        return f"exit code {status.code}"
    try:
        name = signal.Signals(status.signal).name
    except ValueError:
        name = f"signal {status.signal}"
    hint = ": out of memory, or killed from inside the sandbox" if status.signal == signal.SIGKILL else ""
    return f"killed by {name}{hint}"
