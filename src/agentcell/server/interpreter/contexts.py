"""Interpreter (node-wide) and CodeContexts (one sandbox's contexts)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping

import zmq

from agentcell.errors import InvalidArgument, NotFound, QuotaExceeded
from agentcell.protocol.code import CodeContextCreate, CodeRun
from agentcell.server.clock import Clock
from agentcell.server.interpreter.context import (
    Activity,
    CodeContext,
    ContextSpec,
    InterpreterLimits,
    KernelFactory,
)
from agentcell.server.interpreter.jupyter import JupyterKernel
from agentcell.server.interpreter.kernel import CommandSlots, Kernel, SandboxLink
from agentcell.server.interpreter.runner import RunnerKernel
from agentcell.server.sandbox.driver import SandboxDriver

log = logging.getLogger(__name__)


def new_context_id() -> str:
    return "ctx_" + secrets.token_hex(6)


class CodeContexts:
    """The code contexts of one running sandbox. Kernels start on first use (or `prestart`)."""

    def __init__(
        self,
        interpreter: Interpreter,
        sandbox_id: str,
        env: Mapping[str, str],
        activity: Activity | None = None,
    ) -> None:
        self._interpreter = interpreter
        self._activity = activity
        self._link = SandboxLink(interpreter.driver, sandbox_id, interpreter.budget)
        self._env = dict(env)
        self._contexts: dict[str, CodeContext] = {}
        self._default_lock = asyncio.Lock()  # two first runs at once make one default context

    async def create(self, request: CodeContextCreate, *, is_default: bool = False) -> CodeContext:
        await self._check_cwd(request.cwd)
        limit = self._interpreter.limits.max_contexts  # counted after the await: creates interleave
        if len(self._contexts) >= limit:
            raise QuotaExceeded(f"a sandbox holds at most {limit} code contexts; remove one first")
        spec = ContextSpec(new_context_id(), request.language, request.cwd, dict(request.env), is_default)
        limits, clock = self._interpreter.limits, self._interpreter.clock
        context = CodeContext(spec, self._kernel_factory(spec), limits, clock, self._activity)
        self._contexts[context.id] = context
        return context

    async def _check_cwd(self, cwd: str) -> None:
        try:
            found = await self._link.driver.files(self._link.sandbox_id).stat(cwd)
        except NotFound:
            raise InvalidArgument(f"cwd {cwd!r} does not exist in the sandbox; create it first") from None
        if found.type != "dir":
            raise InvalidArgument(f"cwd {cwd!r} is not a directory")

    def _kernel_factory(self, spec: ContextSpec) -> KernelFactory:
        env = {**self._env, **spec.env}
        interpreter = self._interpreter

        def make(name: str) -> Kernel:
            if spec.language == "python":
                return JupyterKernel(
                    self._link,
                    interpreter.zmq_context(),
                    name=name,
                    cwd=spec.cwd,
                    env=env,
                    max_message_bytes=interpreter.limits.max_message_bytes,
                )
            return RunnerKernel(self._link, spec.language, cwd=spec.cwd, env=env)

        return make

    def get(self, context_id: str) -> CodeContext:
        context = self._contexts.get(context_id)
        if context is None:
            raise NotFound(f"no code context {context_id!r} in this sandbox; see GET .../code/contexts")
        return context

    def all(self) -> list[CodeContext]:
        return list(self._contexts.values())

    async def for_run(self, request: CodeRun) -> CodeContext:
        """The context a run request names, or the default context of its language (made on first use)."""
        if request.context_id is not None:
            context = self.get(request.context_id)
            if request.language is not None and request.language != context.spec.language:
                raise InvalidArgument(
                    f"context {context.id} runs {context.spec.language}, not {request.language}; "
                    "give either context_id or language"
                )
            return context
        return await self.default(request.language or "python")

    async def default(self, language: str) -> CodeContext:
        async with self._default_lock:
            for context in self._contexts.values():
                if context.spec.is_default and context.spec.language == language:
                    return context
            request = CodeContextCreate.model_validate({"language": language})
            return await self.create(request, is_default=True)

    async def prestart(self) -> None:
        """Start the default Python kernel now (a sandbox created with `code_kernel`)."""
        await (await self.default("python")).ensure_started()

    async def remove(self, context_id: str) -> None:
        context = self.get(context_id)
        del self._contexts[context_id]
        await context.aclose(f"the code context {context_id} was deleted")

    async def aclose(self, because: str = "its sandbox stopped") -> None:
        contexts, self._contexts = list(self._contexts.values()), {}
        for context in contexts:
            with contextlib.suppress(Exception):
                await context.aclose(because)


class Interpreter:
    """Node-wide: one ZMQ context shared by every kernel connection, the limits, and the
    CodeContexts of each running sandbox. The sandbox service calls `discard` when a sandbox ends.
    Every kernel process holds a slot of `budget` (the server's command budget, shared with every
    sandbox's commands; None: no cap) from before it starts until it is closed: a start past it is
    Unavailable (503), and kernels already running are untouched."""

    def __init__(
        self,
        driver: SandboxDriver,
        clock: Clock,
        limits: InterpreterLimits | None = None,
        budget: CommandSlots | None = None,
    ) -> None:
        self.driver = driver
        self.clock = clock
        self.limits = limits or InterpreterLimits()
        self.budget = budget
        self._zmq: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sandboxes: dict[str, CodeContexts] = {}

    def zmq_context(self) -> zmq.Context[zmq.Socket[bytes]]:
        if self._zmq is None:
            self._zmq = zmq.Context()
        return self._zmq

    def contexts(
        self, sandbox_id: str, env: Mapping[str, str], activity: Activity | None = None
    ) -> CodeContexts:
        found = self._sandboxes.get(sandbox_id)
        if found is None:
            found = self._sandboxes[sandbox_id] = CodeContexts(self, sandbox_id, env, activity)
        return found

    async def discard(self, sandbox_id: str) -> None:
        """Close the contexts of a sandbox that ended (its kernels died with it)."""
        found = self._sandboxes.pop(sandbox_id, None)
        if found is not None:
            await found.aclose()

    async def end_runs(self, because: str) -> None:
        """Close every code context of every sandbox (graceful shutdown): runs in flight end with
        an error naming `because`, as when a context is deleted."""
        await asyncio.gather(*(contexts.aclose(because) for contexts in self._sandboxes.values()))

    async def aclose(self) -> None:
        for sandbox_id in list(self._sandboxes):
            await self.discard(sandbox_id)
        if self._zmq is not None:
            self._zmq.destroy(linger=0)
            self._zmq = None
