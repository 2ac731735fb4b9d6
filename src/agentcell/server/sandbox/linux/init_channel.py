"""InitChannel: the node's end of an instance's command socket; the instance's init forks there.

Made at spawn (a SOCK_SEQPACKET socketpair whose other end only the init holds). The init is in
the sandbox's namespaces and cgroups already, unprivileged and under seccomp, so a fork of it is a
command started without an exec worker's cgroup joins, setns, privilege drop and seccomp load, and
without the spawner's round trip. A request is `<id>\\0exec\\0<cwd>\\0<tty 0|1>\\0` with stdin,
stdout, stderr and the command memfd attached; the init answers `S <id> <pid>` with a pidfd of the
command attached, or `F <id> <reason>` (the reasons an exec worker gives), and once the command
has exited, `X <id> <code> <signal>` (helper.c, "init: commands"). So a command holds no fd of the
server's but its stdio (a worker's holds its control pipe too), and an instance holds this one.

When this end closes (the server died, or released the instance) the init takes no more requests,
and the commands it started run on, as a worker's do: a function instance's server keeps its
memory for the next server. An adopted instance has no channel: its commands go through workers.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from agentcell.server.sandbox.linux.spawner import encode_request

REPLY_BYTES = 1024
GONE = "sandbox init is gone"
"""the reason every start fails with once the init's end has closed (the node reads it as
NotRunning)"""


class StartRefused(Exception):
    """The init did not start the command; `reason` is as an exec worker words it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InitExit:
    """A command's exit as the init reports it, read as an exec worker's control pipe is (see
    process.Control): `exit <code> <signal>`, then "" (end of file); only "" if the channel closed
    first (the init died, or the node let the instance go)."""

    def __init__(self, channel: InitChannel, request_id: int) -> None:
        self._channel = channel
        self._id = request_id
        self._reported: asyncio.Future[str] = channel.loop.create_future()
        self._read = False

    def report(self, line: str) -> None:
        if not self._reported.done():
            self._reported.set_result(line)

    async def readline(self) -> str:
        line = await asyncio.shield(self._reported)  # (a cancelled reader leaves it for the next)
        line, self._read = ("" if self._read else line), True
        return line

    def has_more(self) -> bool:
        """True once the exit is known. Reads what the init sent first: it reports an exit before it
        reaps the command, so while this is False a pidfd opened from the pid names the command."""
        if not self._reported.done():
            self._channel.read_answers()
        return self._reported.done()

    def close(self) -> None:
        self._channel.forget(self._id)
        self.report("")


@dataclass(frozen=True, slots=True)
class Forked:
    """A command the init forked: its pid in the host's and in the sandbox's pid namespace, a
    pidfd the caller closes (it names the command even once another process takes its pid), and
    where its exit will be reported."""

    host_pid: int
    """-1 if it was reaped already (it ran to its end before the answer was read)"""
    pid: int
    pidfd: int
    exit: InitExit


class InitChannel:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self.loop = asyncio.get_running_loop()
        self._waiting: dict[int, asyncio.Future[Forked]] = {}
        self._running: dict[int, InitExit] = {}
        """commands started and not yet reported exited, by request id"""
        self._next_id = 1
        self.closed = False
        # Read for the channel's whole life: an answer nobody waits for any more is acted on at once,
        # and an init that died closes the channel at once.
        self.loop.add_reader(sock.fileno(), self.read_answers)

    @staticmethod
    def pair() -> tuple[socket.socket, socket.socket]:
        """(the node's end, the init's end); the init's goes to the spawn worker, then is closed."""
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    async def start(self, cwd: str, tty: bool, fds: Sequence[int]) -> Forked:
        """Have the init fork a command on fds (stdin, stdout, stderr, command memfd: the caller
        keeps and closes them) in cwd, once it has entered cwd; StartRefused if not."""
        if self.closed:
            raise StartRefused(GONE)
        request_id, self._next_id = self._next_id, self._next_id + 1
        payload = encode_request([str(request_id), "exec", cwd, "1" if tty else "0"])
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        answered: asyncio.Future[Forked] = self.loop.create_future()
        self._waiting[request_id] = answered
        try:
            await self._send(payload, rights)
            return await answered
        except BaseException:
            if answered.done() and not answered.cancelled() and answered.exception() is None:
                forked = answered.result()  # started as its caller gave up: nobody would see it
                forked.exit.close()
                _kill(forked.pidfd)
            raise
        finally:
            self._waiting.pop(request_id, None)

    async def _send(self, payload: bytes, rights: list[tuple[int, int, bytes]]) -> None:
        while True:
            try:
                self._sock.sendmsg([payload], rights)
                return
            except BlockingIOError:  # a frozen (paused) init reads nothing until it is thawed
                writable = self.loop.create_future()
                self.loop.add_writer(self._sock.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    self.loop.remove_writer(self._sock.fileno())
            except OSError:
                self._lose()
                raise StartRefused(GONE) from None

    def read_answers(self) -> None:
        """Act on every message the init has sent (called when the socket is readable)."""
        while not self.closed:
            try:
                message, ancillary, _, _ = self._sock.recvmsg(REPLY_BYTES, socket.CMSG_SPACE(4))
            except BlockingIOError:
                return
            except OSError:
                message, ancillary = b"", []
            pidfds = _received_fds(ancillary)
            if not message and not pidfds:
                self._lose()
                return
            self._answer(message.decode(errors="replace").split(" ", 2), pidfds)

    @property
    def unreported(self) -> int:
        """Commands it started whose exit it has not reported yet (running, or exited a moment
        ago: a command leaves its cgroup before its init has reaped it and said how it ended)."""
        return len(self._running)

    def _answer(self, fields: list[str], pidfds: list[int]) -> None:
        request_id = int(fields[1]) if len(fields) == 3 and fields[1].isdigit() else None
        if fields[0] == "X" and request_id is not None:
            exited = self._running.pop(request_id, None)
            if exited is not None:
                exited.report(f"exit {fields[2]}")
            return
        answered = self._waiting.get(request_id) if request_id is not None else None
        if answered is not None and answered.done():
            answered = None
        if fields[0] == "S" and request_id is not None and fields[2].isdigit() and len(pidfds) == 1:
            if answered is not None:
                self._running[request_id] = exit_ = InitExit(self, request_id)
                answered.set_result(Forked(_host_pid(pidfds[0]), int(fields[2]), pidfds[0], exit_))
                return
            _kill(pidfds.pop())  # its caller gave up waiting
        for fd in pidfds:
            os.close(fd)
        if answered is not None:
            reason = fields[2] if fields[0] == "F" else f"malformed answer {fields!r}"
            answered.set_exception(StartRefused(reason))

    def _lose(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self._sock.fileno())
        self._sock.close()
        waiting, self._waiting = self._waiting, {}
        for answered in waiting.values():
            if not answered.done():
                answered.set_exception(StartRefused(GONE))
        running, self._running = self._running, {}
        for exited in running.values():
            exited.report("")

    def forget(self, request_id: int) -> None:
        """Its command's exit no longer matters to anyone."""
        self._running.pop(request_id, None)

    def close(self) -> None:
        """Close the node's end: the init takes no more requests (its commands run on)."""
        self._lose()


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancillary:
        if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
            fds += array.array("i", data[: len(data) - len(data) % 4])
    return fds


def _kill(pidfd: int) -> None:
    """SIGKILL pidfd's process (if it still runs) and close pidfd."""
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    finally:
        os.close(pidfd)


def _host_pid(pidfd: int) -> int:
    """The pid of pidfd's process in our pid namespace, from its fdinfo; -1 once it is reaped."""
    with contextlib.suppress(OSError), open(f"/proc/self/fdinfo/{pidfd}") as info:
        for line in info:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return -1
