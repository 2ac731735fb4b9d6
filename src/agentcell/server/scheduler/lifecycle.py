"""InstanceManager: boots a function instance (sandbox → server process → listening → initialize
hook), runs hooks with deadlines, and stops instances. Knows nothing about sessions or routing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import signal
import socket
from pathlib import Path

from agentcell.errors import AgentcellError, NotFound
from agentcell.protocol.functions import FunctionConfig
from agentcell.server.clock import Clock
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.observability.telemetry import NullTelemetry, Telemetry
from agentcell.server.sandbox.driver import (
    ExecSpec,
    Mount,
    ResourceUsage,
    SandboxDriver,
    SandboxProcess,
    SandboxSpec,
)
from agentcell.server.scheduler.functions import FunctionVersion
from agentcell.server.scheduler.instances import Instance, InstanceFailed
from agentcell.server.scheduler.mcp_bridge import bridge
from agentcell.server.templates.service import ResolvedTemplate, TemplateService

log = logging.getLogger(__name__)

CODE_DIR = "/code"
SERVER_LOG_NAME = "agentcell-server.log"  # in $TMPDIR, /tmp unless the function's env says otherwise
OUTPUT_TAIL_BYTES = 2048
OUTPUT_READ_MAX_BYTES = 4 << 20
# The user's command travels in the environment, never spliced into a shell string.
SERVER_ARGV = [
    "/bin/bash",
    "-c",
    f'exec >>"${{TMPDIR:-/tmp}}/{SERVER_LOG_NAME}" 2>&1; exec /bin/bash -c "$AGENTCELL_CMD"',
]
HOOK_ARGV = ["/bin/bash", "-c", 'exec /bin/bash -c "$AGENTCELL_HOOK"']
BRIDGE_DIR = Path(bridge.__file__).parent
BRIDGE_MOUNT = "/opt/agentcell/mcp"
BRIDGE_CMD = f"exec /usr/bin/python3 {BRIDGE_MOUNT}/bridge.py"
PORT_POLL_MIN_S = 0.001
PORT_POLL_MAX_S = 0.02


def _bridge_mounts(config: FunctionConfig) -> tuple[Mount, ...]:
    return () if config.stdio is None else (Mount(str(BRIDGE_DIR), BRIDGE_MOUNT, read_only=True),)


def _server_env(config: FunctionConfig) -> dict[str, str]:
    """What the server command runs: the function's own, or the MCP bridge around its stdio one."""
    if config.stdio is not None:
        return {
            "AGENTCELL_CMD": BRIDGE_CMD,
            "AGENTCELL_STDIO": config.stdio,
            "AGENTCELL_STDIO_PROCESS": config.stdio_process,
        }
    assert config.cmd is not None
    return {"AGENTCELL_CMD": config.cmd}


class InstanceManager:
    def __init__(
        self,
        driver: SandboxDriver,
        clock: Clock,
        *,
        pids_max: int,
        stop_grace_s: float,
        templates: TemplateService | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._driver = driver
        self._telemetry = telemetry or NullTelemetry()
        self._templates = templates
        self._template_of: dict[str, str] = {}
        """instance id → the template it counts as a user of, until it stops"""
        self._clock = clock
        self._pids_max = pids_max
        self._grace_s = stop_grace_s
        self._servers: dict[str, SandboxProcess] = {}

    def check_template(self, name: str) -> None:
        """NotFound unless `name` is base or a built template (checked at deploy)."""
        if self._templates is not None:
            self._templates.get(name)
        elif name != "base":
            raise NotFound(f"template {name!r} not found; available: base")

    def _acquire_template(self, instance: Instance, name: str) -> ResolvedTemplate:
        if self._templates is None:
            self.check_template(name)
            return ResolvedTemplate("base")
        resolved = self._templates.acquire(name)
        self._template_of[instance.id] = name
        return resolved

    def _release_template(self, instance: Instance) -> None:
        name = self._template_of.pop(instance.id, None)
        if name is not None and self._templates is not None:
            self._templates.release(name)

    def _spec(self, instance: Instance, version: FunctionVersion, template: ResolvedTemplate) -> SandboxSpec:
        config = version.config
        return SandboxSpec(
            sandbox_id=instance.id,
            template=template.name,
            cpu_millis=max(10, int(config.cpu * 1000)),
            memory_bytes=config.memory_mb << 20,
            disk_bytes=config.disk_mb << 20,
            pids_max=self._pids_max,
            env={**template.env, **self._env(instance, version)},
            mounts=(
                Mount(version.code_dir, CODE_DIR, read_only=True),
                *template.mounts,
                *_bridge_mounts(config),
            ),
            egress=EgressPolicy.from_wire(config.network),
        )

    @staticmethod
    def _env(instance: Instance, version: FunctionVersion) -> dict[str, str]:
        return {
            **version.config.env,
            "PORT": str(version.config.port),
            "AGENTCELL_FUNCTION": version.name,
            "AGENTCELL_FUNCTION_VERSION": str(version.version),
            "AGENTCELL_INSTANCE_ID": instance.id,
        }

    async def boot(self, instance: Instance, version: FunctionVersion) -> None:
        """Start the instance and return when its server listens and its initialize hook passed.
        On failure the sandbox is gone and the instance is marked failed."""
        config = version.config
        try:
            template = self._acquire_template(instance, config.template)
            spawn_started = self._telemetry.now()
            await self._driver.start(self._spec(instance, version, template))
            self._telemetry.phase("sandbox_spawn", spawn_started, instance.id)
            server = await self._driver.exec(
                instance.id,
                # No stdio: it writes its own log (SERVER_ARGV), so pipes held for its whole life
                # would only cost the node two fds per instance.
                ExecSpec(argv=SERVER_ARGV, env=_server_env(config), cwd=CODE_DIR, stdio=False),
            )
            self._servers[instance.id] = server
            listen_started = self._telemetry.now()
            log_path = posixpath.join(config.env.get("TMPDIR", "/tmp"), SERVER_LOG_NAME)
            await self._wait_listening(instance, server, config.ready_timeout_s, log_path)
            self._telemetry.phase("server_listen", listen_started, instance.id)
            if config.initialize is not None:
                hook_started = self._telemetry.now()
                await self.run_hook(
                    instance, config.initialize.cmd, config.initialize.timeout_s, {}, "initialize"
                )
                self._telemetry.phase("initialize_hook", hook_started, instance.id)
        except BaseException as exc:
            instance.mark_failed(str(exc) or type(exc).__name__)
            await self.stop(instance)
            raise
        instance.mark_ready()

    async def _wait_listening(
        self, instance: Instance, server: SandboxProcess, timeout_s: float, log_path: str
    ) -> None:
        exited = asyncio.ensure_future(server.wait())
        delay = PORT_POLL_MIN_S
        try:
            async with asyncio.timeout(timeout_s):
                while not await self._accepts(instance):
                    if exited.done():
                        status = exited.result()
                        raise InstanceFailed(
                            f"the server command exited with code {status.code} before listening "
                            f"on $PORT={instance.port}; {await self._output_tail(instance, log_path)}"
                        )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, PORT_POLL_MAX_S)
        except TimeoutError:
            raise InstanceFailed(
                f"nothing listened on $PORT={instance.port} within {timeout_s:g} s; "
                f"{await self._output_tail(instance, log_path)}"
            ) from None
        finally:
            exited.cancel()

    async def _output_tail(self, instance: Instance, log_path: str) -> str:
        """The end of what the server command printed (the instance is stopped right after, and
        its log with it), for the error a deploy or a request gets."""
        files = self._driver.files(instance.id)
        try:
            size = (await files.stat(log_path)).size
            if size > OUTPUT_READ_MAX_BYTES:
                return f"it printed {size} bytes, too many to show here"
            output = b""
            async with contextlib.aclosing(files.read(log_path)) as chunks:
                async for chunk in chunks:
                    output = (output + chunk)[-OUTPUT_TAIL_BYTES:]
        except AgentcellError as exc:
            return f"its output could not be read ({exc.message})"
        text = output.decode(errors="replace").strip()
        return f"the end of its output:\n{text}" if text else "it printed nothing"

    async def _accepts(self, instance: Instance) -> bool:
        try:
            sock = await self._driver.connect(instance.id, instance.port)
        except (ConnectionRefusedError, ConnectionResetError):
            return False
        sock.close()
        return True

    async def usage(self, instance: Instance) -> ResourceUsage:
        return await self._driver.usage(instance.id)

    async def connect(self, instance: Instance) -> socket.socket:
        return await self._driver.connect(instance.id, instance.port)

    async def server_exited(self, instance: Instance) -> None:
        """Return when the instance's server process or the instance itself is gone."""
        waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._driver.wait_exited(instance.id))]
        if (server := self._servers.get(instance.id)) is not None:
            waits.append(asyncio.ensure_future(server.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def run_hook(
        self, instance: Instance, cmd: str, timeout_s: float, env: dict[str, str], name: str
    ) -> None:
        """Run a hook command in the instance; raise InstanceFailed if it fails or passes its deadline."""
        process = await self._driver.exec(
            instance.id,
            ExecSpec(
                argv=HOOK_ARGV,
                env={**env, "AGENTCELL_HOOK": cmd, "AGENTCELL_HOOK_NAME": name},
                cwd=CODE_DIR,
            ),
        )
        await process.close_stdin()
        drain = [asyncio.ensure_future(s.read()) for s in (process.stdout, process.stderr)]
        try:
            async with asyncio.timeout(timeout_s):
                status = await process.wait()
        except TimeoutError:
            process.send_signal(signal.SIGKILL)
            await process.wait()
            raise InstanceFailed(f"{name} hook passed its {timeout_s:g} s deadline") from None
        finally:
            for task in drain:
                task.cancel()
        if status.code != 0:
            raise InstanceFailed(f"{name} hook exited with code {status.code}")

    async def adopt(self, instance: Instance, template: str = "base") -> bool:
        """Take over a running instance after a restart; it uses `template` again."""
        alive = await self._driver.adopt(instance.id)
        if alive:
            with contextlib.suppress(NotFound):  # its layer is still bound inside it either way
                self._acquire_template(instance, template)
            instance.mark_ready()
        return alive

    async def freeze(self, instance: Instance) -> bool:
        """Freeze the instance's processes (see SandboxDriver.freeze); False: not on this host."""
        return await self._driver.freeze(instance.id)

    async def thaw(self, instance: Instance) -> None:
        with contextlib.suppress(NotFound):
            await self._driver.thaw(instance.id)

    async def release(self, instance: Instance) -> None:
        """Leave the instance running past this server, for the next one to adopt. It counts as
        gone here from now on (so that its watcher does not take it for a crash)."""
        instance.state = "gone"
        self._servers.pop(instance.id, None)
        self._release_template(instance)
        await self._driver.release(instance.id)

    async def stop(self, instance: Instance) -> None:
        instance.state = "gone" if instance.state == "gone" else "stopping"
        server = self._servers.pop(instance.id, None)
        try:
            with contextlib.suppress(NotFound):
                await self._driver.stop(instance.id, self._grace_s)
            self._release_template(instance)
            if server is not None:
                await server.wait()
        finally:
            instance.state = "gone"
            instance.stopped.set()
