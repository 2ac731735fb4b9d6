"""Build: one template build, run inside a sandbox of its own, streamed through a BuildLog.

The build's sandbox is a base instance with the staging layer bound writable at /opt/template;
every recipe step runs there as the sandbox user (recipe commands are hostile: they get the
same confinement as any sandbox command). Only when every step succeeded is the sandbox stopped,
the layer sealed (root-owned, plain files) and published; any failure stops the sandbox and
deletes the staging dir, so nothing half-built is ever visible.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import secrets
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from agentcell.errors import AgentcellError
from agentcell.protocol.templates import (
    BUILD_DIR,
    TEMPLATE_ROOT,
    BuildEndEvent,
    BuildLogEvent,
    BuildState,
    BuildStepEvent,
    TemplateBuildInfo,
    TemplateBuildRequest,
    TemplateInfo,
)
from agentcell.server.clock import Clock
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.sandbox.driver import ExecSpec, Mount, SandboxDriver, SandboxProcess, SandboxSpec
from agentcell.server.templates.buildlog import BuildLog, Event
from agentcell.server.templates.layers import LayerRefused, tree_bytes
from agentcell.server.templates.recipe import BuildStep, build_steps, template_env

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 64 * 1024
APT_LISTS = "/var/lib/apt/lists"


def new_build_id() -> str:
    return "tpb_" + secrets.token_hex(8)


class BuildFailed(Exception):
    """A step, or the build sandbox, failed; the message says which and how."""


@dataclass(frozen=True, slots=True)
class BuildResources:
    cpu_millis: int = 2000
    memory_bytes: int = 2 << 30
    disk_bytes: int = 2 << 30
    """the build sandbox's tmpfs (home, /tmp, pip and npm caches); the layer itself is on disk"""
    pids_max: int = 1024
    layer_bytes: int = 8 << 30
    """the layer's largest size on disk; checked every `layer_check_s` while a step runs"""
    layer_check_s: float = 2.0


@dataclass(slots=True)
class Build:
    id: str
    request: TemplateBuildRequest
    started_at: float
    steps: list[BuildStep]
    state: BuildState = "building"
    step: int = 0
    ended_at: float | None = None
    error: str | None = None
    log: BuildLog = field(default_factory=BuildLog)
    staging: Path | None = None
    """the layer being built, on the node's disk"""

    @property
    def name(self) -> str:
        return self.request.name

    @property
    def sandbox_id(self) -> str:
        return "tplbuild-" + self.id.removeprefix("tpb_")

    def info(self) -> TemplateBuildInfo:
        ended = None if self.ended_at is None else datetime.fromtimestamp(self.ended_at, UTC)
        return TemplateBuildInfo(
            id=self.id,
            name=self.name,
            state=self.state,
            step=self.step,
            total_steps=len(self.steps) + 1,
            started_at=datetime.fromtimestamp(self.started_at, UTC),
            ended_at=ended,
            error=self.error,
        )

    def events(self) -> AsyncIterator[Event]:
        return self.log.follow()

    async def end(
        self,
        state: Literal["ready", "failed"],
        now: float,
        error: str | None = None,
        template: TemplateInfo | None = None,
    ) -> None:
        self.state, self.ended_at, self.error = state, now, error
        await self.log.append(BuildEndEvent(state=state, error=error, template=template))


class BuildRunner:
    """Runs builds on one driver: the build sandbox, the files, the steps, then publish."""

    def __init__(self, driver: SandboxDriver, clock: Clock, resources: BuildResources) -> None:
        self._driver = driver
        self._clock = clock
        self._resources = resources

    def new(self, request: TemplateBuildRequest) -> Build:
        return Build(new_build_id(), request, self._clock.now(), build_steps(request.recipe))

    async def run(self, build: Build, staging: Path) -> float:
        """Run every step; return the build's duration so far with its sandbox gone. Raises
        BuildFailed (the sandbox gone too) when a step or the sandbox fails."""
        build.staging = staging
        try:
            await self._driver.start(self._spec(build, staging))
        except (AgentcellError, OSError) as exc:
            raise BuildFailed(f"the build sandbox did not start: {_message(exc)}") from None
        try:
            await self._write_files(build)
            for index, step in enumerate(build.steps, start=2):
                await self._run_step(build, index, step)
        except (AgentcellError, OSError) as exc:
            raise BuildFailed(_message(exc)) from None
        finally:
            await asyncio.shield(self._driver.stop(build.sandbox_id, grace_s=0))
        return self._clock.now() - build.started_at

    def _spec(self, build: Build, staging: Path) -> SandboxSpec:
        recipe = build.request.recipe
        mounts = [Mount(str(staging), TEMPLATE_ROOT, read_only=False)]
        if recipe.apt and Path(APT_LISTS).is_dir():
            mounts.append(Mount(APT_LISTS, APT_LISTS, read_only=True))
        res = self._resources
        return SandboxSpec(
            sandbox_id=build.sandbox_id,
            cpu_millis=res.cpu_millis,
            memory_bytes=res.memory_bytes,
            disk_bytes=res.disk_bytes,
            pids_max=res.pids_max,
            env=template_env(recipe),
            mounts=tuple(mounts),
            egress=EgressPolicy.from_wire(build.request.network),
        )

    async def _write_files(self, build: Build) -> None:
        recipe = build.request.recipe
        await self._progress(build, 1, f"files ({len(recipe.files)})")
        files = self._driver.files(build.sandbox_id)
        await files.make_dir(BUILD_DIR)
        for item in recipe.files:
            await files.write(item.build_path(), _chunks(item.data()))
        executable = [item.build_path() for item in recipe.files if item.executable]
        if executable:
            await self._exec(build, BuildStep("chmod +x", ["/bin/chmod", "+x", "--", *executable]))

    async def _run_step(self, build: Build, index: int, step: BuildStep) -> None:
        await self._progress(build, index, step.name)
        await self._exec(build, step)

    async def _progress(self, build: Build, index: int, name: str) -> None:
        build.step = index
        await build.log.append(BuildStepEvent(index=index, total=len(build.steps) + 1, name=name))

    async def _exec(self, build: Build, step: BuildStep) -> None:
        process = await self._driver.exec(build.sandbox_id, ExecSpec(argv=step.argv, cwd=BUILD_DIR))
        await process.close_stdin()
        pumps = [
            asyncio.create_task(_pump(process.stdout, "stdout", build.log)),
            asyncio.create_task(_pump(process.stderr, "stderr", build.log)),
        ]
        watchdog = asyncio.create_task(self._watch_layer(build, process))
        try:
            code = await self._wait(process, build.request.recipe.step_timeout_s)
            await asyncio.wait(pumps, timeout=1.0)
        finally:
            for task in [*pumps, watchdog]:
                task.cancel()
            await asyncio.gather(*pumps, watchdog, return_exceptions=True)
        if watchdog.done() and not watchdog.cancelled() and (why := watchdog.result()):
            raise BuildFailed(f"step '{step.name}' made {why}")
        if code is None:
            raise BuildFailed(f"step '{step.name}' timed out after {build.request.recipe.step_timeout_s} s")
        if code != 0:
            output = build.log.tail(2000).strip()
            said = f": {output}" if output else " and printed nothing"
            raise BuildFailed(f"step '{step.name}' exited with {code}{said}")

    async def _watch_layer(self, build: Build, process: SandboxProcess) -> str | None:
        """Kill the step once the layer breaks a limit (`layer_problem`, returned then); runs
        until cancelled."""
        if build.staging is None:
            return None
        while True:
            await asyncio.sleep(self._resources.layer_check_s)
            if why := await asyncio.to_thread(self.layer_problem, build.staging):
                process.send_signal(signal.SIGKILL)
                return why

    def layer_problem(self, layer: Path, size: int | None = None) -> str | None:
        """(thread) What is wrong with the layer (`size`: its size, already measured), as the end
        of "step X made ...", or None. Checked while each step runs and once more when it is
        sealed: a step may well end before the watchdog looks."""
        if size is None:
            try:
                size = tree_bytes(layer)
            except LayerRefused as exc:
                return str(exc)
        if size > self._resources.layer_bytes:
            return f"the layer larger than {self._resources.layer_bytes >> 20} MiB"
        return None

    async def _wait(self, process: SandboxProcess, timeout_s: float) -> int | None:
        """The exit code, or None after a timeout (the process is killed)."""
        try:
            async with asyncio.timeout(timeout_s):
                return (await process.wait()).code
        except TimeoutError:
            process.send_signal(signal.SIGKILL)
            await process.wait()
            return None
        except asyncio.CancelledError:
            process.send_signal(signal.SIGKILL)
            raise


def _message(exc: AgentcellError | OSError) -> str:
    return exc.message if isinstance(exc, AgentcellError) else str(exc)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1 << 20):
        yield data[start : start + (1 << 20)]
    if not data:
        yield b""


async def _pump(stream: asyncio.StreamReader, name: Literal["stdout", "stderr"], sink: BuildLog) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := await stream.read(READ_CHUNK_BYTES):
        if text := decoder.decode(chunk):
            await sink.append(BuildLogEvent(stream=name, data=text))
    if tail := decoder.decode(b"", final=True):
        await sink.append(BuildLogEvent(stream=name, data=tail))
