"""The SandboxDriver protocol: how the node starts, enters, inspects and stops isolated instances.

The scheduler is the only caller. A driver owns the OS resources of its instances (namespaces,
cgroups, mounts, processes) and must leave none behind after `stop` or `reap_orphans`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from agentcell.server.egress.policy import NO_EGRESS, EgressPolicy

SANDBOX_USER = "user"
SANDBOX_UID = 1000
SANDBOX_HOME = "/home/user"
SANDBOX_PATH = f"{SANDBOX_HOME}/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""a sandbox's base PATH: run-time installs (`pip install`, `npm -g`: ~/.local) first"""


@dataclass(frozen=True, slots=True)
class Mount:
    """A host directory bound into the instance (function code: read-only at /code)."""

    host_path: str
    target: str
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What an instance is started with. Sizes in bytes, cpu in millicores (1000 = one core)."""

    sandbox_id: str
    template: str = "base"
    cpu_millis: int = 1000
    memory_bytes: int = 512 << 20
    disk_bytes: int = 1 << 30
    pids_max: int = 512
    env: dict[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    egress: EgressPolicy = NO_EGRESS
    """where its processes may connect to (`none`: loopback only)"""


@dataclass(frozen=True, slots=True)
class TerminalSize:
    """A pseudo-terminal's window, in character cells."""

    rows: int
    cols: int


@dataclass(frozen=True, slots=True)
class ExecSpec:
    """One process to start inside a running instance, confined like its init."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = SANDBOX_HOME
    terminal: TerminalSize | None = None
    """run on a new pseudo-terminal of the instance (its controlling terminal, stdin, stdout and
    stderr): output arrives on `stdout`, `stderr` stays empty, input cannot be closed"""
    stdio: bool = True
    """False: stdin, stdout and stderr are /dev/null inside the instance and the node holds no pipe
    of the process (`stdout` and `stderr` are at end of file, `close_stdin` does nothing,
    `write_stdin` is refused). For a long-lived process that writes its own log (a function
    instance's server): it costs the node only the fds that track its exit. Not with `terminal`."""


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """`code` follows the shell: 128 + signal number when the process was killed by a signal."""

    code: int
    signal: int | None = None


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    cpu_ns: int
    memory_bytes: int
    memory_peak_bytes: int
    pids: int


class SandboxProcess(Protocol):
    """A process started by `SandboxDriver.exec`. Whoever receives it must `wait()` for it."""

    pid: int
    """pid as seen inside the sandbox"""
    host_pid: int
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader

    async def write_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    def send_signal(self, signum: int) -> None:
        """Signal the process inside the sandbox (no-op once it has exited)."""
        ...

    def resize(self, size: TerminalSize) -> None:
        """Set the window of a process started with `ExecSpec.terminal` (its foreground process
        group gets SIGWINCH). Called for such processes only."""
        ...

    async def wait(self) -> ExitStatus: ...


FileType = Literal["file", "dir", "symlink", "other"]


@dataclass(frozen=True, slots=True)
class FileStat:
    path: str
    """absolute path inside the sandbox"""
    name: str
    type: FileType
    size: int
    mode: int
    mtime: datetime
    symlink_target: str | None = None


WRITE_TEMP_PREFIX = ".acell-write-"
WRITE_TEMPS = WRITE_TEMP_PREFIX + "*.tmp"
"""The temp files `SandboxFiles.write` fills beside their targets: never part of a snapshot."""


class SandboxFiles(Protocol):
    """File access confined to one sandbox's root, performed as the sandbox user.

    Paths are absolute or relative to /home/user. A path with a `..` component is refused
    (InvalidArgument); symlinks resolve inside the sandbox root, never outside it. Missing paths
    raise NotFound; wrong kinds (a dir where a file is needed) raise InvalidArgument; writes the
    sandbox user may not make raise PermissionDenied; a full workspace raises QuotaExceeded.
    """

    @property
    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) new files must belong to; None: whoever creates them (the fake driver)."""
        ...

    async def open_dir(self, path: str) -> int:
        """A directory fd of `path`, resolved inside the root, for node-side bulk work (workspace
        snapshots) that walks it with `*at()` calls only. The caller closes it."""
        ...

    async def stat(self, path: str) -> FileStat: ...

    async def list(self, path: str, depth: int = 1) -> list[FileStat]: ...

    def read(self, path: str, chunk_bytes: int = 1 << 20) -> AsyncGenerator[bytes, None]:
        """Stream a regular file. Raises before the first chunk if it cannot be opened; a reader that
        stops early closes it (`contextlib.aclosing`) to release the file at once."""
        ...

    async def write(self, path: str, chunks: AsyncIterable[bytes]) -> FileStat:
        """Create or replace a file (parents made as needed), atomically: readers never see half."""
        ...

    async def make_dir(self, path: str) -> FileStat:
        """mkdir -p"""
        ...

    async def remove(self, path: str) -> None:
        """Remove a file, symlink or a directory tree."""
        ...

    async def rename(self, src: str, dst: str) -> FileStat: ...


class SandboxDriver(Protocol):
    """Starts and stops instances on this node. All ids are the scheduler's sandbox ids."""

    async def start(self, spec: SandboxSpec) -> None:
        """Start an instance and return when it can run commands. On failure nothing is left behind."""
        ...

    async def exec(self, sandbox_id: str, spec: ExecSpec) -> SandboxProcess:
        """Start one process in a running instance. Raises NotFound / NotRunning."""
        ...

    def files(self, sandbox_id: str) -> SandboxFiles:
        """File access for a running instance. Raises NotFound."""
        ...

    async def mount_tmpfs(self, sandbox_id: str, path: str, size_bytes: int) -> None:
        """Mount a size-limited tmpfs owned by the sandbox user over the existing directory
        `path` (resolved inside the instance): a write past `size_bytes` fails with ENOSPC there.
        Raises NotFound / NotRunning."""
        ...

    async def unmount(self, sandbox_id: str, path: str) -> None:
        """Detach what is mounted at `path` inside the instance (no-op when nothing is)."""
        ...

    async def usage(self, sandbox_id: str) -> ResourceUsage: ...

    async def set_limits(self, sandbox_id: str, cpu_millis: int, memory_bytes: int, pids_max: int) -> None:
        """Rewrite a running instance's cgroup limits (the sandbox pool adapts a pre-started
        instance to the request that claims it). Raises NotFound."""
        ...

    async def set_egress(self, sandbox_id: str, egress: EgressPolicy) -> None:
        """Replace a running instance's egress policy (its network's way out) at once: what it
        reached under the old one and the new one refuses is cut. Raises NotFound."""
        ...

    async def freeze(self, sandbox_id: str) -> bool:
        """Stop every process of a running instance where it stands (the cgroup freezer) and
        return once all have stopped, so that its files hold still while they are snapshotted.
        False: this host cannot freeze (nothing changed; the caller goes on unfrozen). Raises
        NotFound; Unavailable when they did not all stop within a few seconds (thawed again).
        `thaw` undoes it; `stop` and `adopt` thaw first."""
        ...

    async def thaw(self, sandbox_id: str) -> None:
        """Let a frozen instance run again (a no-op when it is not frozen)."""
        ...

    async def release(self, sandbox_id: str) -> None:
        """Stop managing a running instance without stopping it: it outlives this driver's
        `aclose` (and the server) for the next server's `adopt`, as after a crash. Used at a
        shutdown that could not save the instance's workspace. A no-op for an unknown id."""
        ...

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        """A connected, non-blocking TCP socket to 127.0.0.1:port inside the instance's network
        namespace (the instance has no other network: this is how ingress reaches it).
        Raises ConnectionRefusedError when nothing listens there, NotFound for an unknown id."""
        ...

    async def adopt(self, sandbox_id: str) -> bool:
        """Take over an instance an earlier server process on this node started (after a restart).
        True if it is alive and now managed by this driver; False if it is gone."""
        ...

    async def wait_exited(self, sandbox_id: str) -> None:
        """Return when the instance's init has died, for whatever reason (kill, OOM of init, crash)."""
        ...

    async def stop(self, sandbox_id: str, grace_s: float = 2.0) -> None:
        """SIGTERM everything, wait up to grace_s, SIGKILL the cgroup, then remove every mount,
        cgroup and directory of the instance. Idempotent: stopping a gone instance is a no-op."""
        ...

    async def reap_orphans(self) -> list[str]:
        """Stop instances this node left running (e.g. before a server restart) that this driver
        object did not start. Returns their ids. Called once at server start."""
        ...

    async def aclose(self) -> None:
        """Stop every instance this driver started."""
        ...
