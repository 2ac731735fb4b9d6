"""FakeDriver: runs "sandboxes" as plain directories and subprocesses, with no isolation at all.

For unit tests of scheduler and API logic only; every isolation property is tested on LinuxDriver.
Each fake sandbox gets its own free host port: a process started with env PORT gets that port
instead, and `connect(id, port)` reaches it, so several fake instances can "listen on $PORT".
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
from dataclasses import replace
from pathlib import Path

from agentcell.errors import InvalidArgument, NotFound
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.sandbox.driver import (
    ExecSpec,
    ExitStatus,
    ResourceUsage,
    SandboxFiles,
    SandboxSpec,
    TerminalSize,
)


class FakeProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        """`proc` has pipes for all of stdin, stdout and stderr, or none (ExecSpec.stdio)."""
        self._proc = proc
        self.pid = proc.pid
        self.host_pid = proc.pid
        self.stdout: asyncio.StreamReader = proc.stdout or _at_eof()
        self.stderr: asyncio.StreamReader = proc.stderr or _at_eof()

    async def write_stdin(self, data: bytes) -> None:
        if self._proc.stdin is None:
            raise InvalidArgument("this process was started without stdin (it reads /dev/null)")
        self._proc.stdin.write(data)
        await self._proc.stdin.drain()

    async def close_stdin(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()

    def send_signal(self, signum: int) -> None:
        if self._proc.returncode is None:
            self._proc.send_signal(signum)

    def resize(self, size: TerminalSize) -> None:
        raise InvalidArgument("the fake driver has no terminals")

    async def wait(self) -> ExitStatus:
        code = await self._proc.wait()
        return ExitStatus(128 - code, -code) if code < 0 else ExitStatus(code)


class FakeDriver:
    def __init__(self, root: Path) -> None:
        """`root` holds the sandboxes' files; the caller owns it (a temp dir of the driver's own
        was left behind by every test that did not close the driver)."""
        self._root = root
        self._running: dict[str, asyncio.Event] = {}
        self._procs: dict[str, list[FakeProcess]] = {}
        self._ports: dict[str, int] = {}
        self._specs: dict[str, SandboxSpec] = {}
        self.started: list[SandboxSpec] = []
        self.adoptable: set[str] = set()
        self.frozen: set[str] = set()
        self.released: set[str] = set()

    async def start(self, spec: SandboxSpec) -> None:
        (self._root / spec.sandbox_id / "home" / "user").mkdir(parents=True)
        self._running[spec.sandbox_id] = asyncio.Event()
        self._procs[spec.sandbox_id] = []
        self._ports[spec.sandbox_id] = _free_port(set(self._ports.values()))
        self._specs[spec.sandbox_id] = spec
        self.started.append(spec)

    def _require(self, sandbox_id: str) -> asyncio.Event:
        try:
            return self._running[sandbox_id]
        except KeyError:
            raise NotFound(f"no instance {sandbox_id}") from None

    async def exec(self, sandbox_id: str, spec: ExecSpec) -> FakeProcess:
        self._require(sandbox_id)
        if spec.terminal is not None:
            raise InvalidArgument("the fake driver has no terminals; use the linux driver")
        stdio = asyncio.subprocess.PIPE if spec.stdio else asyncio.subprocess.DEVNULL
        home = self._root / sandbox_id / "home" / "user"
        mounts = {m.target: m.host_path for m in self._specs[sandbox_id].mounts}
        cwd = mounts.get(spec.cwd) or (home if spec.cwd in ("/home/user", "~") else spec.cwd)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "TMPDIR": str(home.parent),
            **self._specs[sandbox_id].env,
            **spec.env,
        }
        if "PORT" in env:
            env["PORT"] = str(self._ports[sandbox_id])
        proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            cwd=cwd,
            env=env,
            start_new_session=True,
            stdin=stdio,
            stdout=stdio,
            stderr=stdio,
        )
        fake = FakeProcess(proc)
        procs = self._procs.get(sandbox_id)
        if procs is None:  # stopped while the process started: it must not outlive the sandbox
            fake.send_signal(signal.SIGKILL)
            await fake.wait()
            raise NotFound(f"no instance {sandbox_id}")
        procs.append(fake)
        return fake

    def files(self, sandbox_id: str) -> SandboxFiles:
        from agentcell.server.sandbox.linux.files import RootedFiles

        self._require(sandbox_id)
        return RootedFiles(str(self._root / sandbox_id), uid=None, gid=None)

    async def mount_tmpfs(self, sandbox_id: str, path: str, size_bytes: int) -> None:
        """No isolation here: the directory stays a plain one (no size limit)."""
        self._require(sandbox_id)

    async def unmount(self, sandbox_id: str, path: str) -> None:
        self._require(sandbox_id)

    async def usage(self, sandbox_id: str) -> ResourceUsage:
        self._require(sandbox_id)
        return ResourceUsage(cpu_ns=0, memory_bytes=0, memory_peak_bytes=0, pids=len(self._procs[sandbox_id]))

    async def set_limits(self, sandbox_id: str, cpu_millis: int, memory_bytes: int, pids_max: int) -> None:
        """No cgroups here: the instance's recorded spec carries the new limits."""
        self._require(sandbox_id)
        spec = self._specs[sandbox_id]
        self._specs[sandbox_id] = replace(
            spec, cpu_millis=cpu_millis, memory_bytes=memory_bytes, pids_max=pids_max
        )

    async def set_egress(self, sandbox_id: str, egress: EgressPolicy) -> None:
        """No network here: the instance's recorded spec carries the new policy."""
        self._require(sandbox_id)
        self._specs[sandbox_id] = replace(self._specs[sandbox_id], egress=egress)

    async def freeze(self, sandbox_id: str) -> bool:
        """Nothing is stopped here; `frozen` records it (tests)."""
        self._require(sandbox_id)
        self.frozen.add(sandbox_id)
        return True

    async def thaw(self, sandbox_id: str) -> None:
        self.frozen.discard(sandbox_id)

    async def release(self, sandbox_id: str) -> None:
        """Fake restarts reuse the driver object: a released instance stays running, adoptable."""
        if sandbox_id in self._running:
            self.released.add(sandbox_id)
            self.adoptable.add(sandbox_id)

    def spec(self, sandbox_id: str) -> SandboxSpec:
        """The spec a running instance has now (tests)."""
        self._require(sandbox_id)
        return self._specs[sandbox_id]

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        self._require(sandbox_id)
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self._ports[sandbox_id]))
        except BaseException:
            sock.close()
            raise
        return sock

    async def adopt(self, sandbox_id: str) -> bool:
        """Fake restarts reuse the driver object: an adoptable instance is simply still running."""
        self.frozen.discard(sandbox_id)
        self.released.discard(sandbox_id)
        return sandbox_id in self.adoptable and sandbox_id in self._running

    async def wait_exited(self, sandbox_id: str) -> None:
        await self._require(sandbox_id).wait()

    def crash(self, sandbox_id: str) -> None:
        """Test hook: the instance dies on its own."""
        self._require(sandbox_id).set()

    async def stop(self, sandbox_id: str, grace_s: float = 2.0) -> None:
        self.frozen.discard(sandbox_id)
        self.released.discard(sandbox_id)
        exited = self._running.pop(sandbox_id, None)
        if exited is None:
            return
        procs = self._procs.pop(sandbox_id, [])
        for proc in procs:  # all killed before any await: a cancelled stop leaves none running
            proc.send_signal(signal.SIGKILL)
        # Shielded: a cancelled stop still reaps them (a process object dropped before its exit is
        # collected warns "subprocess … is still running" wherever the garbage collector runs).
        await asyncio.shield(asyncio.gather(*(proc.wait() for proc in procs)))
        self._ports.pop(sandbox_id, None)
        self._specs.pop(sandbox_id, None)
        shutil.rmtree(self._root / sandbox_id, ignore_errors=True)
        exited.set()

    async def reap_orphans(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        for sandbox_id in list(self._running):
            await self.stop(sandbox_id)


def _at_eof() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_eof()
    return reader


def _free_port(taken: set[int]) -> int:
    """A port free now and not another fake sandbox's (the kernel may hand a port just closed out
    again: two instances on one port, the second's server exits once the first answered for it)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port not in taken:
            return port
