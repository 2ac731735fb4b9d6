"""One command running in a sandbox: the node side of `acell-helper exec`.

The helper is our direct child; the command is the helper's child, inside the sandbox. The
helper reports on a control pipe: `<host pid> <sandbox pid>` once forked, `exit <code> <signal>`
when the command ends, or `error <reason>` if it could not start it. The command's stdin, stdout
and stderr are the helper's own pipes, passed straight through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agentcell.errors import Internal, InvalidArgument, NotRunning
from agentcell.server.sandbox.driver import ExitStatus

ORPHAN_EXIT_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command goes: the instance's init and cgroups, as the helper needs them."""

    helper: Path
    init_pid: int
    init_pidfd: int
    """the node's pidfd of the init: the helper enters through it, so a recycled pid is harmless"""
    procs_files: Sequence[str]
    pidns_inode: int


async def start_process(
    target: Target, argv: Sequence[str], cwd: str, env: Mapping[str, str]
) -> LinuxProcess:
    """Run argv in the sandbox; return once it has been forked there."""
    if not argv:
        raise InvalidArgument("argv must name a command")
    env_fd = _env_memfd(env)
    ctl_read, ctl_write = os.pipe()
    try:
        helper = HelperChild(
            _helper_argv(target, argv, cwd, ctl_write, env_fd),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(ctl_write, env_fd, target.init_pidfd),
        )
    except ValueError as e:  # a NUL byte in argv or cwd
        os.close(ctl_read)
        raise InvalidArgument(f"argv and cwd may not contain NUL bytes: {e}") from None
    except OSError as e:
        os.close(ctl_read)
        raise Internal(f"could not run the sandbox helper: {e}") from e
    finally:
        os.close(ctl_write)
        os.close(env_fd)
    control = _ControlPipe(ctl_read)
    streams: _Streams | None = None
    try:
        streams = await _connect_streams(helper.popen)
        host_pid, pid = await _read_started(control, helper)
    except BaseException:
        control.close()
        helper.kill()
        if streams is not None:
            streams.stdin.close()  # the read pipes close themselves at EOF, now that it is dead
        raise
    return LinuxProcess(helper, streams, control, host_pid, pid, _open_pidfd(host_pid, target.pidns_inode))


class HelperChild:
    """A helper process we started, reaped through its pidfd on the event loop (one waiter).

    Not asyncio's subprocess support: under uvloop a spawn costs ~3 ms more here, and the
    default loop of Python 3.11 starts a watcher thread per child. Popen forks with vfork."""

    def __init__(
        self, args: Sequence[str], *, stdin: int, stdout: int, stderr: int, pass_fds: Sequence[int] = ()
    ) -> None:
        # env={}: the helper runs as host root, so no user-chosen variable reaches it.
        self.popen = subprocess.Popen(
            args, stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=pass_fds, env={}
        )
        self.pid = self.popen.pid
        self._pidfd: int | None = os.pidfd_open(self.pid)
        self.returncode: int | None = None

    async def wait(self) -> int:
        """The exit status as Popen reports it (negative: killed by that signal)."""
        while self.returncode is None:
            returncode = self.popen.poll()
            if returncode is not None:
                self._finish(returncode)
                return returncode
            assert self._pidfd is not None
            await wait_readable(self._pidfd)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL and reap (immediate: the helper has no handler and holds no lock)."""
        if self.returncode is None:
            self.popen.kill()
            self._finish(self.popen.wait())

    def take_output(self) -> tuple[bytes, bytes]:
        """All of stdout and stderr of an exited helper whose pipes nobody else reads."""
        assert self.popen.stdout is not None and self.popen.stderr is not None
        with self.popen.stdout, self.popen.stderr:
            return self.popen.stdout.read(), self.popen.stderr.read()

    def _finish(self, returncode: int) -> None:
        self.returncode = returncode
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


@dataclass(frozen=True, slots=True)
class _Streams:
    stdin: asyncio.StreamWriter
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader


class _PipeProtocol(asyncio.StreamReaderProtocol):
    """Closes the pipe at end of file. (StreamReaderProtocol asks to keep a half-closed transport
    open, which uvloop honours: its pipe would then never be closed.)"""

    def eof_received(self) -> bool:
        super().eof_received()
        return False


async def _connect_streams(popen: subprocess.Popen[bytes]) -> _Streams:
    """The helper's pipes as asyncio streams, with flow control: a command writing faster than
    its reader is paused by the full pipe instead of filling the server's memory."""
    assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
    loop = asyncio.get_running_loop()
    stdout, stderr = asyncio.StreamReader(), asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: _PipeProtocol(stdout), popen.stdout)
    await loop.connect_read_pipe(lambda: _PipeProtocol(stderr), popen.stderr)
    transport, protocol = await loop.connect_write_pipe(
        lambda: _PipeProtocol(asyncio.StreamReader()), popen.stdin
    )
    return _Streams(asyncio.StreamWriter(transport, protocol, None, loop), stdout, stderr)


def _helper_argv(target: Target, argv: Sequence[str], cwd: str, ctl_fd: int, env_fd: int) -> list[str]:
    args = [str(target.helper), "exec", "--pid", str(target.init_pid), "--init-pidfd", str(target.init_pidfd)]
    for path in target.procs_files:
        args += ["--cgroup-procs", path]
    return [*args, "--cwd", cwd, "--ctl-fd", str(ctl_fd), "--env-fd", str(env_fd), "--", *argv]


def _env_memfd(env: Mapping[str, str]) -> int:
    """The command's environment, NUL-separated, on a memfd for the helper to read."""
    entries = []
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidArgument(f"environment variable names may not be empty or hold = or NUL: {key!r}")
        entries.append(f"{key}={value}\0".encode())
    fd = os.memfd_create("acell-env", os.MFD_CLOEXEC)
    try:
        data = b"".join(entries)
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
    except BaseException:
        os.close(fd)
        raise
    return fd


async def _read_started(control: _ControlPipe, helper: HelperChild) -> tuple[int, int]:
    line = await control.readline()
    fields = line.split()
    if len(fields) == 2 and all(f.lstrip("-").isdigit() for f in fields):
        return int(fields[0]), int(fields[1])
    returncode = await helper.wait()
    reason = line.removeprefix("error ").strip() or f"the helper exited with {returncode}"
    if "is gone" in reason:
        raise NotRunning(f"the sandbox is not running: {reason}")
    raise Internal(f"could not start the command in the sandbox: {reason}")


def _open_pidfd(host_pid: int, pidns_inode: int) -> int | None:
    """A pidfd for the command, or None once it is gone. The pid-namespace check guards against
    the (tiny) chance that the command was already reaped and its pid handed to someone else."""
    try:
        fd = os.pidfd_open(host_pid)
    except ProcessLookupError:
        return None
    try:
        same_sandbox = os.stat(f"/proc/{host_pid}/ns/pid").st_ino == pidns_inode
    except OSError:
        same_sandbox = False
    if not same_sandbox:
        os.close(fd)
        return None
    return fd


async def wait_readable(fd: int) -> None:
    """Wait until fd polls readable (a pipe with data or EOF, a pidfd whose process ended).
    One waiter per fd at a time: the event loop keeps a single reader callback per fd."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_ready() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def reap_if_child(pidfd: int) -> bool:
    """Reap the process if it is our exited child. True unless it is our child and still running
    (not ours: its own parent reaps it)."""
    try:
        return os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG) is not None
    except ChildProcessError:
        return True


class _ControlPipe:
    """Line reader over the helper's control pipe, without a transport or protocol object."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd: int | None = fd
        self._buffer = b""
        self._eof = False

    async def readline(self) -> str:
        """The next line without its newline; "" at end of file."""
        while b"\n" not in self._buffer and not self._eof and self._fd is not None:
            await wait_readable(self._fd)
            try:
                chunk = os.read(self._fd, 4096)
            except BlockingIOError:
                continue
            self._buffer += chunk
            self._eof = not chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LinuxProcess:
    """`SandboxProcess` for a command started by `start_process`."""

    def __init__(
        self,
        helper: HelperChild,
        streams: _Streams,
        control: _ControlPipe,
        host_pid: int,
        pid: int,
        pidfd: int | None,
    ) -> None:
        self.pid = pid
        self.host_pid = host_pid
        self.stdout = streams.stdout
        self.stderr = streams.stderr
        self._stdin = streams.stdin
        self._helper = helper
        self._control = control
        self._pidfd = pidfd
        self._status: ExitStatus | None = None
        self._wait_lock = asyncio.Lock()

    @property
    def helper_pid(self) -> int:
        return self._helper.pid

    @property
    def helper_running(self) -> bool:
        return self._helper.returncode is None

    async def write_stdin(self, data: bytes) -> None:
        try:
            self._stdin.write(data)
            await self._stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise NotRunning("the process no longer reads its stdin") from None

    async def close_stdin(self) -> None:
        if self._stdin.is_closing():
            return
        self._stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await self._stdin.wait_closed()

    def send_signal(self, signum: int) -> None:
        if self._status is not None or self._pidfd is None:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, signum)

    async def wait(self) -> ExitStatus:
        async with self._wait_lock:
            if self._status is None:
                self._status = await self._collect()
            return self._status

    async def _collect(self) -> ExitStatus:
        # Cancellation-safe: a caller may give up waiting (a timeout) and then send SIGKILL, so
        # nothing is torn down until the status is known.
        line = await self._control.readline()
        returncode = await self._helper.wait()
        fields = line.split()
        if len(fields) == 3 and fields[0] == "exit":
            status = ExitStatus(code=int(fields[1]), signal=int(fields[2]) or None)
        else:
            # The helper died before the command did (SIGKILLed from outside): the command got
            # SIGKILL from its parent-death signal and was re-parented to us, the subreaper.
            await self._reap_orphaned_command()
            signo = -returncode if returncode < 0 else None
            status = ExitStatus(code=128 + signo if signo else returncode, signal=signo)
        self._control.close()
        self._stdin.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return status

    async def _reap_orphaned_command(self) -> None:
        if self._pidfd is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wait_readable(self._pidfd), ORPHAN_EXIT_TIMEOUT_S)
        reap_if_child(self._pidfd)
