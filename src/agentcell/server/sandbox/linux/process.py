"""One command running in a sandbox: the node side of its start, by the instance's init or by an
exec worker.

An instance the node spawned has an InitChannel (init_channel.py): its init forks the command and
answers with its pids; the control pipe then gets only the exit line. Otherwise (an instance
adopted from an earlier server) the spawner forks an exec worker (spawner.py) whose child, inside
the sandbox, is the command. The worker reports on the control pipe: `<host pid> <sandbox pid>`
once forked (and in its working directory), `exit <code> <signal>` when the command ends, or
`error <reason>` if it could not start it (`error cwd <errno>`: the sandbox user cannot enter the
working directory). The command's stdin, stdout and stderr are pipes made here and handed to the
init or the worker, one pseudo-terminal (pty.py) whose master stays here, or /dev/null (nothing
stays here); its argv and env travel on a memfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import select
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol, TypeAlias

from agentcell.errors import Internal, InvalidArgument, NotRunning, QuotaExceeded
from agentcell.server.sandbox.driver import ExitStatus, TerminalSize
from agentcell.server.sandbox.linux.init_channel import InitChannel, StartRefused
from agentcell.server.sandbox.linux.pty import Terminal, open_terminal
from agentcell.server.sandbox.linux.spawner import Spawner, Worker

ORPHAN_EXIT_TIMEOUT_S = 1.0
MAX_ARG_BYTES = 32 * 4096
"""Linux's MAX_ARG_STRLEN: one argument or environment string, its NUL included"""
MAX_EXEC_BYTES = 2 << 20
"""what execve takes of arguments and environment (their strings and pointers) under the 8 MiB
stack limit a sandbox has: a quarter of it"""
POINTER_BYTES = 8
_PASS_IT_ANOTHER_WAY = "pass long input on stdin or in a file"
PIDFD_SIGNAL_PROCESS_GROUP = 1 << 2
"""pidfd_send_signal flag (Linux 6.9): the target's whole process group"""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command goes: the instance's init and cgroups, as the worker needs them."""

    spawner: Spawner
    init_pid: int
    init_pidfd: int
    """the node's pidfd of the init: the worker enters through it, so a recycled pid is harmless"""
    procs_files: Sequence[str]
    channel: InitChannel | None = None
    """the init's command socket, for an instance this node spawned"""


async def start_process(
    target: Target,
    argv: Sequence[str],
    cwd: str,
    env: Mapping[str, str],
    terminal: TerminalSize | None = None,
    *,
    stdio: bool = True,
    sandbox_id: str = "",
) -> LinuxProcess:
    """Run argv in the sandbox (on a new terminal of that size, if given; on /dev/null without
    `stdio`); return once it has been forked there and has entered `cwd` (InvalidArgument if it
    cannot: `sandbox_id` names the sandbox in that error)."""
    if not argv:
        raise InvalidArgument("argv must name a command")
    if terminal is not None and not stdio:
        raise InvalidArgument("a command on a terminal has its stdio there: drop stdio=False")
    command_fd = _command_memfd(argv, env)
    try:
        pipes = _stdio_of(target, terminal, stdio)
    except BaseException:
        os.close(command_fd)
        raise
    start = _start_by_init if target.channel is not None and not target.channel.closed else _start_by_worker
    return await start(target, terminal is not None, _Where(cwd, sandbox_id), pipes, command_fd)


_Pipes: TypeAlias = "_StdioPipes | _TerminalFds | _NullStdio"


async def _start_by_init(
    target: Target, tty: bool, where: _Where, pipes: _Pipes, command_fd: int
) -> LinuxProcess:
    assert target.channel is not None
    try:
        forked = await target.channel.start(where.cwd, tty, (*pipes.theirs, command_fd))
    except BaseException as error:
        pipes.close_ours()
        if isinstance(error, StartRefused):
            raise _start_error(error.reason, target, where) from None
        raise
    finally:
        pipes.close_theirs()
        os.close(command_fd)
    try:
        kill = functools.partial(signal.pidfd_send_signal, forked.pidfd, signal.SIGKILL)
        streams = await _connect(pipes, forked.exit, kill)
    finally:
        os.close(forked.pidfd)
    return LinuxProcess(_ForkedByInit(target.init_pid), streams, forked.exit, forked.host_pid, forked.pid)


async def _start_by_worker(
    target: Target, tty: bool, where: _Where, pipes: _Pipes, command_fd: int
) -> LinuxProcess:
    ctl_read, ctl_write = os.pipe2(os.O_CLOEXEC)
    control = ControlPipe(ctl_read)
    args = _exec_args(target, where.cwd) + (["--tty", "1"] if tty else [])
    try:
        fds = (*pipes.theirs, ctl_write, command_fd, target.init_pidfd)
        worker = await target.spawner.run("exec", args, fds)
    except BaseException:
        control.close()
        pipes.close_ours()
        raise
    finally:
        pipes.close_theirs()
        os.close(ctl_write)
        os.close(command_fd)
    streams = await _connect(pipes, control, worker.kill)
    try:
        host_pid, pid = await _read_started(control, worker, target, where)
    except BaseException:
        control.close()
        worker.kill()
        _close_streams(streams)
        raise
    return LinuxProcess(worker, streams, control, host_pid, pid)


async def _connect(pipes: _Pipes, control: Control, kill: Callable[[], None]) -> _Streams:
    """The node's ends of the command's stdio as streams; the command is killed if that fails."""
    try:
        return await pipes.connect()
    except BaseException:
        control.close()
        with contextlib.suppress(ProcessLookupError):
            kill()
        pipes.close_ours()
        raise


def _close_streams(streams: _Streams) -> None:
    if streams.stdin is not None:
        streams.stdin.close()  # the read pipes close themselves at EOF, now that it is dead
    elif streams.terminal is not None:
        streams.terminal.hang_up_later()


def _stdio_of(
    target: Target, terminal: TerminalSize | None, stdio: bool
) -> _StdioPipes | _TerminalFds | _NullStdio:
    if terminal is not None:
        return _TerminalFds(target, terminal)
    return _StdioPipes() if stdio else _NullStdio()


class _StdioPipes:
    """The command's stdin, stdout and stderr: the worker gets `theirs`, the node keeps `ours`."""

    def __init__(self) -> None:
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        stdout_r, stdout_w = os.pipe2(os.O_CLOEXEC)
        stderr_r, stderr_w = os.pipe2(os.O_CLOEXEC)
        self.theirs = (stdin_r, stdout_w, stderr_w)
        self.ours: tuple[BinaryIO, BinaryIO, BinaryIO] = (
            open(stdin_w, "wb", buffering=0),  # noqa: SIM115 - the streams take them over
            open(stdout_r, "rb", buffering=0),  # noqa: SIM115
            open(stderr_r, "rb", buffering=0),  # noqa: SIM115
        )

    def close_theirs(self) -> None:
        for fd in self.theirs:
            os.close(fd)

    def close_ours(self) -> None:
        for pipe in self.ours:
            pipe.close()

    async def connect(self) -> _Streams:
        return await _connect_streams(self)


class _TerminalFds:
    """A new terminal of the instance: the worker gets its slave three times, the node keeps the
    master."""

    def __init__(self, target: Target, size: TerminalSize) -> None:
        self._master, self._slave = open_terminal(target.init_pid, target.init_pidfd, size)
        self.theirs = (self._slave, self._slave, self._slave)

    def close_theirs(self) -> None:
        os.close(self._slave)

    def close_ours(self) -> None:
        os.close(self._master)

    async def connect(self) -> _Streams:
        terminal = Terminal(self._master)
        return _Streams(None, terminal.output, _at_eof(), terminal)  # a terminal has one output stream


class _NullStdio:
    """/dev/null as the command's stdin, stdout and stderr; the node keeps nothing of it. The
    host's /dev/null is handed in: the sandbox's /dev/null is a bind mount of that very device
    (helper.c, build_dev), so the command gets nothing it could not open itself."""

    def __init__(self) -> None:
        self._null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.theirs = (self._null, self._null, self._null)

    def close_theirs(self) -> None:
        os.close(self._null)

    def close_ours(self) -> None:
        pass

    async def connect(self) -> _Streams:
        return _Streams(None, _at_eof(), _at_eof())


def _at_eof() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_eof()
    return reader


@dataclass(frozen=True, slots=True)
class _Streams:
    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    terminal: Terminal | None = None


class _PipeProtocol(asyncio.StreamReaderProtocol):
    """Closes the pipe at end of file. (StreamReaderProtocol asks to keep a half-closed transport
    open, which uvloop honours: its pipe would then never be closed.)"""

    def eof_received(self) -> bool:
        super().eof_received()
        return False


async def _connect_streams(pipes: _StdioPipes) -> _Streams:
    """The command's pipes as asyncio streams, with flow control: a command writing faster than
    its reader is paused by the full pipe instead of filling the server's memory."""
    stdin, stdout_pipe, stderr_pipe = pipes.ours
    loop = asyncio.get_running_loop()
    stdout, stderr = asyncio.StreamReader(), asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: _PipeProtocol(stdout), stdout_pipe)
    await loop.connect_read_pipe(lambda: _PipeProtocol(stderr), stderr_pipe)
    transport, protocol = await loop.connect_write_pipe(lambda: _PipeProtocol(asyncio.StreamReader()), stdin)
    return _Streams(asyncio.StreamWriter(transport, protocol, None, loop), stdout, stderr)


def _exec_args(target: Target, cwd: str) -> list[str]:
    args = ["--pid", str(target.init_pid), "--cwd", cwd]
    for path in target.procs_files:
        args += ["--cgroup-procs", path]
    return args


def _command_memfd(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """`<argc>`, the arguments, then the environment, NUL-terminated, on a memfd for the worker."""
    entries = [f"{len(argv)}\0".encode()]
    for arg in argv:
        if "\0" in arg:
            raise InvalidArgument(f"argv may not contain NUL bytes: {arg[:80]!r}")
        entries.append(_exec_string(arg.encode() + b"\0", "an argument of the command (a `cmd` is one)"))
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidArgument(f"environment variable names may not be empty or hold = or NUL: {key!r}")
        entries.append(_exec_string(f"{key}={value}\0".encode(), f"environment variable {key}"))
    exec_bytes = sum(len(entry) + POINTER_BYTES for entry in entries[1:])
    if exec_bytes > MAX_EXEC_BYTES:
        raise InvalidArgument(
            f"the command's arguments and environment take {exec_bytes} bytes, and Linux runs a command"
            f" with at most {MAX_EXEC_BYTES}: {_PASS_IT_ANOTHER_WAY}"
        )
    fd = os.memfd_create("acell-command", os.MFD_CLOEXEC)
    try:
        data = memoryview(b"".join(entries))
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
    except BaseException:
        os.close(fd)
        raise
    return fd


def _exec_string(encoded: bytes, what: str) -> bytes:
    """One NUL-terminated string for execve, refused if Linux would refuse it (E2BIG)."""
    if len(encoded) > MAX_ARG_BYTES:
        raise InvalidArgument(
            f"{what} is {len(encoded) - 1} bytes, and Linux takes at most {MAX_ARG_BYTES - 1} in one:"
            f" {_PASS_IT_ANOTHER_WAY}"
        )
    return encoded


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a command was to start, for the errors that say so."""

    cwd: str
    sandbox_id: str

    def cwd_error(self, reason: str) -> InvalidArgument | None:
        """The error for an `error cwd <errno>` reason; None for any other reason."""
        kind, _, number = reason.partition(" ")
        if kind != "cwd" or not number.isdigit():
            return None
        code = int(number)
        sandbox = f"sandbox {self.sandbox_id}" if self.sandbox_id else "the sandbox"
        why, what_to_do = _CWD_ERRORS.get(code, (f"cannot be entered ({os.strerror(code)})", "pick another"))
        return InvalidArgument(f"cwd {self.cwd} {why} in {sandbox}: {what_to_do}")


_CWD_ERRORS = {
    errno.ENOENT: ("does not exist", "create it first (mkdir -p), or pick another"),
    errno.ENOTDIR: ("is not a directory", "pick a directory"),
    errno.EACCES: ("may not be entered by the sandbox's user (uid 1000)", "chmod it, or pick another"),
}
"""why the sandbox's user could not enter a working directory, and what to change, by errno"""


async def _read_started(
    control: ControlPipe, worker: Worker, target: Target, where: _Where
) -> tuple[int, int]:
    line = await control.readline()
    fields = line.split()
    if len(fields) == 2 and all(f.lstrip("-").isdigit() for f in fields):
        return int(fields[0]), int(fields[1])
    returncode = await worker.wait()
    reason = line.removeprefix("error ").strip() or f"the helper exited with {returncode}"
    raise _start_error(reason, target, where)


def _start_error(reason: str, target: Target, where: _Where) -> Exception:
    """The error for a command that did not start, from the reason its worker or the init gave."""
    if (bad_cwd := where.cwd_error(reason)) is not None:
        return bad_cwd
    if "is gone" in reason:
        return NotRunning(f"the sandbox is not running: {reason}")
    if _is_out_of_processes(reason):
        return QuotaExceeded(_out_of_processes_message(target))
    return Internal(f"could not start the command in the sandbox: {reason}")


def _is_out_of_processes(reason: str) -> bool:
    """Whether the worker could not fork the command because the sandbox's pids cgroup is full
    (fork and clone fail with EAGAIN at pids.max): the sandbox's limit, not a server fault."""
    call, _, why = reason.partition(":")
    return call in ("fork", "clone", "clone3") and why.strip() == os.strerror(errno.EAGAIN)


def _out_of_processes_message(target: Target) -> str:
    limit = _pids_max(target)
    at_limit = f"its limit of {limit} processes (pids)" if limit is not None else "its process limit (pids)"
    return (
        f"the sandbox is at {at_limit}, so the command could not start; end some of its processes "
        "(signal the commands that started them), or kill the sandbox: processes that outlived "
        "their command end only with it"
    )


def _pids_max(target: Target) -> int | None:
    """The instance's pids.max, read beside its cgroup procs files (None if unreadable or "max")."""
    for procs in target.procs_files:
        path = os.path.join(os.path.dirname(procs), "pids.max")  # (v1: only the pids hierarchy has it)
        with contextlib.suppress(OSError, ValueError), open(path) as f:
            return int(f.read())
    return None


def _open_pidfd(host_pid: int, control: Control) -> int | None:
    """A pidfd for the command, or None once it has ended. The worker reaps the command only after
    writing its exit line, so while no line is waiting the pid is still the command's: a pidfd
    opened first cannot name a process that took the pid over later. (The caller must not have
    read the exit line already.)"""
    if host_pid <= 0:  # reaped before its start was answered
        return None
    try:
        fd = os.pidfd_open(host_pid)
    except ProcessLookupError:
        return None
    if control.has_more():
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


def _forget_frames(err: BaseException) -> None:
    """Drop the traceback of a broken stdin pipe's error. The pipe's protocol keeps the error, and
    its frames hold the process, which holds the pipe: a cycle that keeps the process, and the
    input queued for it, until the cycle collector runs."""
    err.__traceback__ = None


class Control(Protocol):
    """Where a command's exit is reported: an exec worker's control pipe (ControlPipe) or the
    init's channel (InitExit), read as lines: `exit <code> <signal>`, then "" (end of file)."""

    async def readline(self) -> str: ...
    def has_more(self) -> bool:
        """True if a line (or end of file) is waiting to be read."""

    def close(self) -> None: ...


class ControlPipe:
    """Line reader over a worker's control pipe, without a transport or protocol object."""

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

    def has_more(self) -> bool:
        """True if a line (or end of file) is waiting to be read."""
        if self._buffer or self._eof or self._fd is None:
            return True
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        return bool(poller.poll(0))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _Helper(Protocol):
    """What a command's process knows of the helper that started it and reports its exit."""

    pid: int
    returncode: int | None
    """None while the helper runs"""

    async def wait(self) -> int: ...


class _ForkedByInit:
    """The helper of a command the init forked: the init itself, not a process of the node's (so
    never `running` as a helper is). A control pipe that closes without an exit line means the
    init died: the sandbox was killed, and the command with it."""

    returncode: int | None = -signal.SIGKILL

    def __init__(self, init_pid: int) -> None:
        self.pid = init_pid

    async def wait(self) -> int:
        return -signal.SIGKILL


class LinuxProcess:
    """`SandboxProcess` for a command started by `start_process`."""

    def __init__(
        self,
        worker: _Helper,
        streams: _Streams,
        control: Control,
        host_pid: int,
        pid: int,
    ) -> None:
        self.pid = pid
        self.host_pid = host_pid
        self.stdout = streams.stdout
        self.stderr = streams.stderr
        self._stdin = streams.stdin
        self._terminal = streams.terminal
        self._worker = worker
        self._control = control
        self._ended = False
        """its control pipe's last line has been read: the command has exited (or its worker died)"""
        self._status: ExitStatus | None = None
        self._wait_lock = asyncio.Lock()

    @property
    def helper_pid(self) -> int:
        return self._worker.pid

    @property
    def helper_running(self) -> bool:
        return self._worker.returncode is None

    async def write_stdin(self, data: bytes) -> None:
        if self._terminal is not None:
            await self._terminal.write(data)
            return
        if self._stdin is None:
            raise InvalidArgument("this process was started without stdin (it reads /dev/null)")
        try:
            self._stdin.write(data)
            await self._stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as err:
            _forget_frames(err)
            raise NotRunning("the process no longer reads its stdin") from None

    async def close_stdin(self) -> None:
        if self._terminal is not None:
            raise InvalidArgument("a terminal's input cannot be closed; send ^D (\\x04) or exit")
        if self._stdin is None or self._stdin.is_closing():  # None: /dev/null, nothing to close
            return
        self._stdin.close()
        try:
            await self._stdin.wait_closed()
        except (BrokenPipeError, ConnectionResetError) as err:
            _forget_frames(err)

    def send_signal(self, signum: int) -> None:
        """Signal the command's process group (it is a session leader), so that a timeout or a
        kill also ends what a `bash -c` line started; just the command on kernels before 6.9.
        The flag names the group whose id is the command's pid: until the command's setsid
        there is none (ESRCH), and then the command has started nothing, so it alone is signalled.
        The pidfd is opened here, not held for the command's life: one fd fewer per running
        command and per function instance (command_budget.py)."""
        if self._status is not None or self._ended:
            return
        pidfd = _open_pidfd(self.host_pid, self._control)
        if pidfd is None:
            return
        try:
            _signal_group(pidfd, signum)
        finally:
            os.close(pidfd)

    def resize(self, size: TerminalSize) -> None:
        if self._terminal is None:
            raise InvalidArgument("this process has no terminal to resize")
        self._terminal.resize(size)

    async def wait(self) -> ExitStatus:
        async with self._wait_lock:
            if self._status is None:
                self._status = await self._collect()
            return self._status

    async def _collect(self) -> ExitStatus:
        # Cancellation-safe: a caller may give up waiting (a timeout) and then send SIGKILL, so
        # nothing is torn down until the status is known.
        line = await self._control.readline()
        self._ended = True  # no await since the line was taken: send_signal sees it at once
        returncode = await self._worker.wait()
        fields = line.split()
        if len(fields) == 3 and fields[0] == "exit":
            status = ExitStatus(code=int(fields[1]), signal=int(fields[2]) or None)
        else:
            # The worker died before the command did (SIGKILLed from outside): the command got
            # SIGKILL from its parent-death signal and was re-parented to us, the subreaper.
            if isinstance(self._worker, Worker):
                await self._reap_orphaned_command()
            signo = -returncode if returncode < 0 else None
            status = ExitStatus(code=128 + signo if signo else returncode, signal=signo)
        self._control.close()
        if self._stdin is not None:
            self._stdin.close()
        if self._terminal is not None:
            self._terminal.hang_up_later()  # output still in the terminal is read meanwhile
        return status

    async def _reap_orphaned_command(self) -> None:
        """Reap the command left by a dead worker. Its pid stays its own until it is reaped, and
        we (the subreaper) are who reaps it, so opening its pidfd only now is safe."""
        try:
            pidfd = os.pidfd_open(self.host_pid)
        except ProcessLookupError:
            return
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wait_readable(pidfd), ORPHAN_EXIT_TIMEOUT_S)
            reap_if_child(pidfd)
        finally:
            os.close(pidfd)


def _signal_group(pidfd: int, signum: int) -> None:
    """Signal the process group led by pidfd's process, or that process alone when it leads none
    (yet) or the kernel lacks the flag; nothing once it is gone."""
    try:
        signal.pidfd_send_signal(pidfd, signum, None, PIDFD_SIGNAL_PROCESS_GROUP)
        return
    except ProcessLookupError:
        pass  # not a group leader yet, or gone
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: a kernel without the flag
            raise
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signum)
