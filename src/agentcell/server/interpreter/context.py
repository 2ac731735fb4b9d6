"""CodeContext: one kernel's life — lazy start, one execution at a time, timeout → interrupt →
restart when hung, interrupt and restart on request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from agentcell.errors import NotFound
from agentcell.protocol.code import CodeContextInfo, ContextState, EndStatus
from agentcell.server.clock import Clock
from agentcell.server.interpreter.execution import CodeEventModel, Execution
from agentcell.server.interpreter.kernel import Kernel, KernelExited, Pending

log = logging.getLogger(__name__)


class ContextClosed(KernelExited, NotFound):
    """The context was closed for good (deleted, or its sandbox ended). A run queued on it ends
    with `kernel_died` (it is a KernelExited); a request that would start or restart its kernel,
    racing the delete, is a 404 that says so (it was a 500)."""


KernelFactory = Callable[[str], Kernel]
"""Makes an unstarted kernel; the argument names this generation (for its socket paths)."""


@dataclass(frozen=True, slots=True)
class InterpreterLimits:
    max_contexts: int = 16
    """per sandbox"""
    max_output_bytes: int = 16 << 20
    """per execution: stream text and result bundles together; the rest is dropped"""
    interrupt_grace_s: float = 2.0
    """after a timeout's interrupt, how long a kernel has to stop before it is restarted"""
    max_message_bytes: int = 64 << 20
    """one kernel message; a larger one is dropped by ZMQ before it reaches server memory"""


@dataclass(frozen=True, slots=True)
class ContextSpec:
    id: str
    language: str
    cwd: str
    env: Mapping[str, str]
    is_default: bool


class Activity(Protocol):
    """Told when an execution starts and ends (the sandbox's metering: it is active meanwhile)."""

    def begin(self, now: float) -> None: ...

    def end(self, now: float) -> None: ...


class CodeContext:
    def __init__(
        self,
        spec: ContextSpec,
        factory: KernelFactory,
        limits: InterpreterLimits,
        clock: Clock,
        activity: Activity | None = None,
    ):
        self.spec = spec
        self._activity = activity
        self._factory = factory
        self._limits = limits
        self._clock = clock
        self._kernel: Kernel | None = None
        self._generation = 0
        self._start_lock = asyncio.Lock()
        self._run_lock = asyncio.Lock()
        self._interrupt_lock = asyncio.Lock()
        """one interrupt at a time: each runs a process in the sandbox, and holds server fds past
        the command budget (it must work at the limit), so a flood of them may not run at once"""
        self._starting = False
        self._closed_because: str | None = None
        """why the context was closed for good (deleted, its sandbox gone): it starts no kernel"""
        self.restarts = 0
        self.last_restart_reason: str | None = None
        self.execution_count = 0

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def state(self) -> ContextState:
        if self._starting:
            return "starting"
        if self._kernel is None:
            return "new" if self._generation == 0 else "dead"
        if not self._kernel.is_alive:
            return "dead"
        return "busy" if self._run_lock.locked() else "idle"

    @property
    def kernel_host_pid(self) -> int | None:
        return None if self._kernel is None else self._kernel.host_pid

    def info(self) -> CodeContextInfo:
        return CodeContextInfo(
            id=self.id,
            language=self.spec.language,
            cwd=self.spec.cwd,
            env_keys=sorted(self.spec.env),
            state=self.state,
            is_default=self.spec.is_default,
            restarts=self.restarts,
            last_restart_reason=self.last_restart_reason,
            execution_count=self.execution_count,
        )

    # -- the kernel -----------------------------------------------------------------------------

    async def ensure_started(self) -> Kernel:
        """The running kernel, started (or, if it died, started again) first. Raises Unavailable,
        or ContextClosed once the context is closed."""
        async with self._start_lock:
            if self._closed_because is not None:
                raise ContextClosed(
                    f"the {self.spec.language} kernel was stopped: {self._closed_because}; its state "
                    "is gone (create a new context to run code)"
                )
            if self._kernel is not None and self._kernel.is_alive:
                return self._kernel
            if self._kernel is not None:
                await self._drop_kernel("the kernel exited")
            kernel = self._factory(f"{self.id}-{self._generation}")
            self._generation += 1
            self._starting = True
            try:
                await kernel.start()
            finally:
                self._starting = False
            self._kernel = kernel
            return kernel

    async def _drop_kernel(self, reason: str) -> None:
        kernel, self._kernel = self._kernel, None
        if kernel is not None:
            await kernel.aclose()
            self.restarts += 1
            self.last_restart_reason = reason
            log.info("code context %s: kernel replaced (%s)", self.id, reason)

    async def restart(self) -> None:
        """A fresh kernel now (state lost); a running execution ends with `kernel_died`."""
        async with self._start_lock:
            await self._drop_kernel("restarted on request")
        await self.ensure_started()

    async def interrupt(self) -> None:
        """SIGINT to the running execution (a no-op when idle)."""
        async with self._interrupt_lock:
            if self._kernel is not None and self._kernel.is_alive:
                await self._kernel.interrupt()

    async def aclose(self, because: str = "the code context was closed") -> None:
        """Stop the kernel for good. A running execution, and any queued behind it, ends with
        `kernel_died` and an error that says `because` (e.g. "the code context was deleted")."""
        async with self._start_lock:
            self._closed_because = because
            kernel, self._kernel = self._kernel, None
            if kernel is not None:
                await kernel.aclose()

    # -- executions -----------------------------------------------------------------------------

    async def run(
        self, code: str, env: Mapping[str, str], timeout_s: float | None
    ) -> AsyncGenerator[CodeEventModel, None]:
        """Events of one execution, always ending with one `end` event."""
        execution = Execution(self.id, self._limits.max_output_bytes, self._clock.now())
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        try:
            await asyncio.wait_for(self._run_lock.acquire(), timeout_s)
        except TimeoutError:
            yield Execution.error("TimeoutError", f"the context stayed busy for all of {timeout_s:g} s")
            yield execution.end("timeout", self._clock.now())
            return
        if self._activity is not None:
            self._activity.begin(self._clock.now())
        try:  # closed with this generator: its finally interrupts an execution left running
            async with contextlib.aclosing(
                self._run_locked(execution, code, env, timeout_s, deadline)
            ) as events:
                async for event in events:
                    yield event
        finally:
            if self._activity is not None:
                self._activity.end(self._clock.now())
            self._run_lock.release()

    async def _run_locked(
        self,
        execution: Execution,
        code: str,
        env: Mapping[str, str],
        timeout_s: float | None,
        deadline: float | None,
    ) -> AsyncGenerator[CodeEventModel, None]:
        status: EndStatus | None = None
        restarted = False
        pending: Pending | None = None
        kernel: Kernel | None = None
        try:
            kernel = await self.ensure_started()
            pending = await kernel.send(code, env)
            async for event in self._collect(kernel, pending, execution, deadline):
                yield event
            if not pending.done:
                status = "timeout"
                restarted = not await self._stop_after_timeout(kernel, pending)
                yield self._timeout_error(timeout_s, restarted)
        except KernelExited as exc:
            status = "kernel_died"
            yield Execution.error("KernelDied", self._kernel_died(exc))
        except Exception as exc:  # start failures (Unavailable) and the like end the stream cleanly
            status = "kernel_died"
            yield Execution.error("KernelUnavailable", getattr(exc, "message", None) or repr(exc))
        finally:
            if kernel is not None:
                kernel.end_execution()
            if pending is not None and not pending.done and status is None:
                with contextlib.suppress(Exception):  # the client left mid-execution: stop it
                    await self.interrupt()
        self.execution_count += 1
        yield execution.end(status, self._clock.now(), restarted=restarted)

    async def _collect(
        self, kernel: Kernel, pending: Pending, execution: Execution, deadline: float | None
    ) -> AsyncIterator[CodeEventModel]:
        loop = asyncio.get_running_loop()
        while not pending.done:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            message = await kernel.receive(pending, remaining)
            if message is None:
                return
            for event in execution.events(message):
                yield event

    async def _stop_after_timeout(self, kernel: Kernel, pending: Pending) -> bool:
        """Interrupt; True if the kernel finished its answer within the grace period, else it is
        replaced. Output that arrives meanwhile is dropped (the call is over). A reply without
        the end of its output counts as no answer: a bash context whose code closed the fd its
        end markers go to replied to every later run, then timed out, for good."""
        await kernel.interrupt()
        loop = asyncio.get_running_loop()
        grace_end = loop.time() + self._limits.interrupt_grace_s
        while not pending.done:
            if await kernel.receive(pending, max(0.0, grace_end - loop.time())) is None:
                break
        if pending.done:
            return True
        async with self._start_lock:
            await self._drop_kernel("it ignored the interrupt after a timeout")
        return False

    def _kernel_died(self, exc: KernelExited) -> str:
        if isinstance(exc, ContextClosed):
            return str(exc)
        if self._closed_because is not None:
            return f"{exc}: {self._closed_because}; its state is gone (create a new context to run code)"
        return f"{exc}; its state is lost (the next run starts a new one)"

    @staticmethod
    def _timeout_error(timeout_s: float | None, restarted: bool) -> CodeEventModel:
        if restarted:
            value = (
                f"execution timed out after {timeout_s:g} s; the kernel ignored the interrupt and was "
                "restarted, so the context's state is lost"
            )
        else:
            value = f"execution timed out after {timeout_s:g} s and was interrupted; the state is kept"
        return Execution.error("TimeoutError", value)
