"""The node's spawner: one `acell-helper serve` process per driver that forks every sandbox worker.

The server never forks. A fork of the big Python process (plus the helper's exec) cost the event
loop ~0.85 ms per sandbox start and per command; the spawner is a few hundred KB of static C, so
its fork costs tens of microseconds, and it runs beside the event loop. Requests go over a
SOCK_SEQPACKET socketpair: `<id>\\0<op>\\0<args>...` with the worker's file descriptors attached
(SCM_RIGHTS). The spawner answers `S <id> <worker pid>` (or `F <id> <reason>`) at once and
`X <worker pid> <code> <signal>` once it has reaped that worker; a worker reports its own progress
on the control pipe the request carried.

The spawner runs SCHED_BATCH (its workers go back to SCHED_OTHER): woken by a request, it would
otherwise preempt the event loop in the middle of sendmsg (measured: 0.43 ms per request, 0.11 ms
without). It dies with the thread that started it (parent-death signal), so it is started from the
event loop's thread.

If the spawner dies, requests in flight fail with `Internal`, the workers it leaves behind are
re-parented to the server (a subreaper) and reaped here, and the next request starts a new one. A
worker forked in the very instant of the crash, before its `S` reply, is unknown to the node: it
still finishes its job (its control pipe is closed, so it fails) but stays a zombie of the server.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from agentcell.errors import Internal, InvalidArgument

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 64 << 10
"""the spawner's receive buffer; argv and env travel on a memfd, so only paths come near it"""
MAX_REQUEST_STRINGS = 512
REPLY_BYTES = 1024
UNREPORTED_WORKER_S = 30.0
"""how long, after the spawner died, its unreported workers are waited for (a start in flight
ends within seconds, more on a loaded machine)"""


class Worker:
    """One process forked by the spawner (a sandbox start or a command's helper): its pid and,
    once the spawner has reaped it, its exit status."""

    def __init__(self, spawner: Spawner, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        """as Popen reports it: negative when a signal killed the worker"""
        self.adopted_pidfd: int | None = None
        """set once the spawner died and left this worker to the server"""
        self._spawner = spawner
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        """SIGKILL the worker if it still runs (the spawner checks it has not reaped it yet)."""
        if self.returncode is not None:
            return
        if self.adopted_pidfd is None:
            self._spawner.kill(self, signal.SIGKILL)
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.adopted_pidfd, signal.SIGKILL)

    def finish(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
            self._exited.set_result(returncode)


class Spawner:
    """Owns the spawner process and its socket; started on first use and after it died."""

    def __init__(self, helper: Path) -> None:
        self._helper = helper
        self._link: _Link | None = None
        self._next_id = 1

    async def run(self, op: str, args: Sequence[str], fds: Sequence[int]) -> Worker:
        """Fork a worker for op with args and a copy of fds; the caller keeps (and closes) fds."""
        payload = encode_request([str(self._next_id), op, *args])
        link = self._connect()
        request_id, self._next_id = self._next_id, self._next_id + 1
        return await link.request(request_id, payload, fds)

    def kill(self, worker: Worker, signum: int) -> None:
        if self._link is not None and not self._link.closed:
            self._link.send_now(encode_request(["0", "kill", str(worker.pid), str(int(signum))]))

    @property
    def pid(self) -> int | None:
        return None if self._link is None or self._link.closed else self._link.process.pid

    async def aclose(self) -> None:
        """Close the socket (the spawner exits at end of file) and wait for it to be gone."""
        if self._link is not None:
            await self._link.aclose()
            self._link = None

    def _connect(self) -> _Link:
        if self._link is None or self._link.closed:
            self._link = _Link.start(self._helper, self)
        return self._link


class _Link:
    """One spawner process and the node's end of its socket."""

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket, owner: Spawner) -> None:
        self.process = process
        self.closed = False
        self._sock = sock
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._pending: dict[int, asyncio.Future[Worker]] = {}
        self._workers: dict[int, Worker] = {}
        self._outbox: list[tuple[bytes, Sequence[int], asyncio.Future[Worker] | None]] = []
        self._pidfd = os.pidfd_open(process.pid)
        self._gone: asyncio.Future[None] = self._loop.create_future()
        self._settler: asyncio.Task[None] | None = None
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self._loop.add_reader(self._pidfd, self._on_process_exit)

    @classmethod
    def start(cls, helper: Path, owner: Spawner) -> _Link:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # env={}: the spawner runs as host root, so no user-chosen variable reaches it. Its own
            # session: a terminal's ^C meant for the server does not reach it or its workers.
            process = subprocess.Popen(
                [str(helper), "serve", "--sock-fd", str(theirs.fileno()), "--parent", str(os.getpid())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env={},
                start_new_session=True,
            )
        except OSError as e:
            ours.close()
            raise Internal(f"could not start the sandbox spawner {helper}: {e}") from e
        finally:
            theirs.close()
        ours.setblocking(False)
        log.debug("sandbox spawner started, pid %d", process.pid)
        return cls(process, ours, owner)

    async def request(self, request_id: int, payload: bytes, fds: Sequence[int]) -> Worker:
        started: asyncio.Future[Worker] = self._loop.create_future()
        self._pending[request_id] = started
        self._outbox.append((payload, fds, started))
        self._flush()
        return await started  # cancelled before the reply: _on_started kills the worker

    def send_now(self, payload: bytes) -> None:
        self._outbox.append((payload, (), None))
        self._flush()

    async def aclose(self) -> None:
        if not self.closed:
            self._lose("the sandbox driver was closed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._gone), 5)
        if not self._gone.done():  # the spawner ignored end of file: it must not outlive us
            self.process.kill()
            await asyncio.shield(self._gone)
        if self._settler is not None:  # (the driver settles what is left once more as it closes)
            self._settler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._settler

    # ------------------------------------------------------------------ sending

    def _flush(self) -> None:
        while self._outbox and not self.closed:
            payload, fds, started = self._outbox[0]
            if started is not None and started.done():  # its caller gave up (and closed fds)
                self._outbox.pop(0)
                continue
            try:
                self._sock.sendmsg([payload], _rights(fds))
            except BlockingIOError:
                self._loop.add_writer(self._sock.fileno(), self._on_writable)
                return
            except OSError as e:
                self._lose(f"the sandbox spawner's socket failed: {e}")
                return
            self._outbox.pop(0)

    def _on_writable(self) -> None:
        self._loop.remove_writer(self._sock.fileno())
        self._flush()

    # ------------------------------------------------------------------ receiving

    def _on_readable(self) -> None:
        while not self.closed:
            try:
                message = self._sock.recv(REPLY_BYTES)
            except BlockingIOError:
                return
            except ConnectionResetError:
                message = b""  # it died with requests unread
            except OSError as e:
                self._lose(f"the sandbox spawner's socket failed: {e}")
                return
            if not message:
                self._lose("the sandbox spawner exited")
                return
            self._dispatch(message.decode(errors="replace").split(" ", 3))

    def _dispatch(self, fields: list[str]) -> None:
        kind = fields[0]
        if kind == "S" and len(fields) == 3:
            self._on_started(int(fields[1]), int(fields[2]))
        elif kind == "F" and len(fields) >= 2:
            failed = self._pending.pop(int(fields[1]), None)
            reason = " ".join(fields[2:]) or "unknown reason"
            if failed is None:
                log.warning("the sandbox spawner refused a request: %s", reason)
            elif not failed.done():
                failed.set_exception(Internal(f"the sandbox spawner could not start a worker: {reason}"))
        elif kind == "X" and len(fields) == 4:
            worker = self._workers.pop(int(fields[1]), None)
            code, signo = int(fields[2]), int(fields[3])
            if worker is not None:
                worker.finish(-signo if signo else code)
        else:
            log.warning("ignoring a malformed message from the sandbox spawner: %r", fields)

    def _on_started(self, request_id: int, pid: int) -> None:
        worker = Worker(self._owner, pid)
        self._workers[pid] = worker  # now, not when the caller resumes: its X may be next
        started = self._pending.pop(request_id, None)
        if started is None or started.done():
            worker.kill()  # nobody waits for it any more
        else:
            started.set_result(worker)

    # ------------------------------------------------------------------ losing the spawner

    def _lose(self, reason: str) -> None:
        """Stop using this spawner: fail what is in flight. Its workers are adopted once it is
        gone (see _on_process_exit); they keep running meanwhile."""
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self._sock.fileno())
        self._loop.remove_writer(self._sock.fileno())
        self._sock.close()
        self._outbox.clear()
        for started in self._pending.values():
            if not started.done():
                started.set_exception(Internal(f"{reason} before it started the worker"))
        self._pending.clear()
        if self._workers and not self._gone.done():
            log.warning("%s; taking over its %d workers", reason, len(self._workers))

    def _on_process_exit(self) -> None:
        """The spawner is dead and its orphans are re-parented (the kernel does that before a
        pidfd turns readable): reap it, then its workers as our own children."""
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.process.wait()
        self._lose(f"the sandbox spawner exited with {self.process.returncode}")
        for worker in self._workers.values():
            _adopt(self._loop, worker)
        known = set(self._workers)
        self._workers.clear()
        # a worker forked in the instant before the spawner died was never reported: reap it too
        self._settler = self._loop.create_task(
            settle_unreported_workers(exclude=known, timeout_s=UNREPORTED_WORKER_S)
        )
        self._gone.set_result(None)


def _adopt(loop: asyncio.AbstractEventLoop, worker: Worker) -> None:
    """Reap an orphaned worker, now our child (the server is a subreaper), when it exits."""
    try:
        pidfd = os.pidfd_open(worker.pid)
    except ProcessLookupError:
        worker.finish(-signal.SIGKILL)  # reaped by someone else: its status is lost
        return

    def on_exit() -> None:
        loop.remove_reader(pidfd)
        try:
            result = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            result = None  # not our child (no subreaper): its status is lost
        finally:
            worker.adopted_pidfd = None
            os.close(pidfd)
        worker.finish(_returncode(result) if result else -signal.SIGKILL)

    worker.adopted_pidfd = pidfd
    loop.add_reader(pidfd, on_exit)


def _returncode(result: os.waitid_result) -> int:
    return result.si_status if result.si_code == os.CLD_EXITED else -result.si_status


def encode_request(strings: Sequence[str]) -> bytes:
    payload = ("\0".join(strings) + "\0").encode()
    if payload.count(b"\0") != len(strings):  # a NUL inside a string would split it in two
        raise InvalidArgument(f"arguments and paths may not contain NUL bytes: {strings[:3]!r}...")
    if len(payload) > MAX_REQUEST_BYTES or len(strings) > MAX_REQUEST_STRINGS:
        raise InvalidArgument(
            f"this request has {len(strings)} options and paths in {len(payload)} bytes; the limits "
            f"are {MAX_REQUEST_STRINGS} and {MAX_REQUEST_BYTES} (fewer or shorter mount paths)"
        )
    return payload


def _rights(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def _worker_children() -> list[tuple[int, str]]:
    """(pid, state) of this process's children that are helper workers: helper processes in our
    own pid namespace (a sandbox's init, re-parented to this subreaper, lives in its own)."""
    me, our_pidns, found = os.getpid(), os.readlink("/proc/self/ns/pid"), []
    with os.scandir("/proc") as entries:  # closed even if a read below fails
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as stat_file:
                    stat = stat_file.read()
            except OSError:
                continue
            comm, _, rest = stat[stat.index("(") + 1 :].rpartition(")")
            state, ppid = rest.split()[:2]
            if int(ppid) == me and comm.startswith("acell-helper") and _pidns(entry.name) == our_pidns:
                found.append((int(entry.name), state))
    return found


def _pidns(pid: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


async def settle_unreported_workers(exclude: set[int] | None = None, timeout_s: float = 2.0) -> None:
    """Reap helper children that have exited but that nobody waits for: workers a lost spawner
    forked and never reported. Called when the driver closes and its spawner is gone, so the only
    workers left are such ones; waits a little for running ones to finish (looking less often as
    time passes: each look reads every process's stat)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    pause = 0.02
    while children := [(pid, state) for pid, state in _worker_children() if pid not in (exclude or ())]:
        for pid, state in children:
            if state == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG on a zombie: never blocks
        if asyncio.get_running_loop().time() >= deadline:
            return
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.25)
