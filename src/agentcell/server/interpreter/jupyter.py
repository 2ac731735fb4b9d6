"""JupyterKernel: ipykernel in the sandbox, reached over unix-socket ZMQ from the node.

The kernel binds `ipc://` sockets under the sandbox's /tmp. The node connects to them through
`/proc/<kernel pid>/root`, but never by path: each socket file is opened `O_PATH` with
`openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)` from the sandbox root and ZMQ connects to
`/proc/self/fd/<fd>`, so sandbox code that swaps a socket for a symlink cannot point the server at a
host socket. One persistent connection (shell + iopub) per kernel; no client per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import stat
from collections.abc import Mapping
from typing import Any

import zmq

from agentcell.errors import Unavailable
from agentcell.server.interpreter.channel import IOPUB_HWM, KernelChannel
from agentcell.server.interpreter.kernel import KernelExited, KernelProcess, Pending, SandboxLink
from agentcell.server.interpreter.sources import PYTHON, runtime_source
from agentcell.server.interpreter.wire import JupyterSession, KernelMessage
from agentcell.server.sandbox.driver import ExecSpec
from agentcell.server.sandbox.linux.fscalls import IN_ROOT, RESOLVE_NO_SYMLINKS, openat2

SOCKET_DIR = "/tmp/.agentcell-kernels"
SHELL, IOPUB = 1, 2
START_TIMEOUT_S = 30.0
HANDSHAKE_INTERVAL_S = 0.05
EXIT_POLL_S = 0.25
IDLE_GRACE_S = 1.0
"""after the reply, how long to wait for the `idle` status that closes an execution's outputs"""
KERNEL_SLOTS = 3
"""slots of the server's command budget (4 fds each, FDS_PER_COMMAND) one kernel holds until it
is closed: measured 10 fds — its stdout, stderr and control pipes, its root and two socket-file
O_PATH fds, two ZMQ sockets with a mailbox eventfd each (test_budget_kernels.py)"""


def open_socket_file(root: int, path: str) -> int:
    """An O_PATH fd of the unix socket at `path` inside the sandbox whose root dirfd is `root`.
    Symlinks are refused (anywhere on the path), so the fd names a socket in the sandbox itself."""
    try:
        fd = openat2(root, path.lstrip("/"), os.O_PATH, resolve=IN_ROOT | RESOLVE_NO_SYMLINKS)
    except OSError as exc:
        raise Unavailable(f"the kernel's socket {path} cannot be opened: {exc.strerror}") from None
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        os.close(fd)
        raise Unavailable(f"the kernel's socket {path} is not a socket")
    return fd


class JupyterKernel:
    language = "python"

    def __init__(
        self,
        link: SandboxLink,
        zmq_context: zmq.Context[zmq.Socket[bytes]],
        *,
        name: str,
        cwd: str,
        env: Mapping[str, str],
        max_message_bytes: int,
    ) -> None:
        self._link = link
        self._zmq = zmq_context
        self._prefix = f"{SOCKET_DIR}/{name}"
        self._cwd = cwd
        self._env = dict(env)
        self._max_message_bytes = max_message_bytes
        self._session = JupyterSession(secrets.token_hex(32).encode())
        self._process: KernelProcess | None = None
        self._slots = link.hold()
        self._fds: list[int] = []
        self._channel: KernelChannel | None = None
        self._loop_time = asyncio.get_running_loop().time

    @property
    def is_alive(self) -> bool:
        return self._process is not None and not self._process.exited.is_set()

    @property
    def host_pid(self) -> int | None:
        return None if self._process is None else self._process.process.host_pid

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, TimeoutError):
                raise Unavailable(f"the python kernel did not start within {START_TIMEOUT_S:g} s") from None
            if isinstance(exc, (KernelExited, OSError)):
                raise Unavailable(f"the python kernel did not start: {exc}") from None
            raise

    async def _start(self) -> None:
        key = secrets.token_hex(32)
        self._session = JupyterSession(key.encode())
        source = runtime_source("rich_output.py") + runtime_source("python_kernel.py")
        argv = [PYTHON, "-c", source, self._prefix, key, str(self._max_message_bytes)]
        self._slots.take(KERNEL_SLOTS)
        process = await self._link.exec(ExecSpec(argv=argv, env=self._env, cwd=self._cwd))
        self._process = KernelProcess(process, self._link)
        root = os.open(f"/proc/{process.host_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._fds.append(root)
        await process.close_stdin()
        await self._wait_ready()
        self._process.watch(drain_stdout=True)
        self._connect(root)
        await self._handshake()

    async def _wait_ready(self) -> None:
        assert self._process is not None
        stdout = self._process.process.stdout
        async with asyncio.timeout(START_TIMEOUT_S):
            while line := await stdout.readline():
                if line == b"ready\n":
                    return
        err = (await self._process.process.stderr.read(4000)).decode(errors="replace").strip()
        raise Unavailable(f"the python kernel exited while starting: {err[-800:] or 'no message'}")

    def _connect(self, root: int) -> None:
        shell = self._socket(zmq.DEALER, root, SHELL)
        try:
            iopub = self._socket(zmq.SUB, root, IOPUB)
        except BaseException:
            shell.close(linger=0)
            raise
        iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self._channel = KernelChannel(shell, iopub)

    def _socket(self, kind: int, root: int, port: int) -> zmq.Socket[bytes]:
        fd = open_socket_file(root, f"{self._prefix}-{port}")
        self._fds.append(fd)
        sock = self._zmq.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.RCVHWM, IOPUB_HWM)
        sock.connect(f"ipc:///proc/self/fd/{fd}")
        return sock

    @property
    def _open_channel(self) -> KernelChannel:
        if self._channel is None:
            raise KernelExited("the python kernel is closed")
        return self._channel

    async def _handshake(self) -> None:
        """kernel_info until iopub carries the status of one: then the SUB socket is subscribed.
        (The DEALER queues requests until its connection is up; SUB drops what comes before.)"""
        channel = self._open_channel
        sent: set[str] = set()
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                frames, msg_id = self._session.request("kernel_info_request", {})
                channel.send(frames)
                sent.add(msg_id)
                while got := await channel.receive(HANDSHAKE_INTERVAL_S):
                    message = self._session.parse(got[1])
                    if not got[0] and message.parent_id in sent:
                        while await channel.receive(0.005):  # the rest of the handshake's answers
                            pass
                        channel.drop_iopub(True)
                        return
                self._raise_if_exited()

    def _raise_if_exited(self) -> None:
        if self._process is None or self._process.exited.is_set():
            detail = self._process.describe_exit() if self._process else ""
            raise KernelExited(f"the python kernel exited{detail}")

    async def send(self, code: str, env: Mapping[str, str]) -> Pending:
        self._raise_if_exited()
        content: dict[str, Any] = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": False,
            "agentcell_env": dict(env),
        }
        frames, msg_id = self._session.request("execute_request", content)
        self._open_channel.drop_iopub(False)
        self._open_channel.send(frames)
        return Pending(msg_id, idle=False)

    def end_execution(self) -> None:
        if self._channel is not None:
            self._channel.drop_iopub(True)

    async def receive(self, pending: Pending, timeout_s: float | None) -> KernelMessage | None:
        deadline = None if timeout_s is None else self._loop_time() + timeout_s
        while not pending.done:
            got = await self._open_channel.receive(self._wait_s(pending, deadline))
            if got is None:
                self._raise_if_exited()
                if pending.replied and self._loop_time() >= pending.idle_deadline:
                    pending.idle = True  # the idle status was lost (e.g. an oversized message)
                if deadline is not None and self._loop_time() >= deadline:
                    return None
                continue
            if message := self._accept(got[0], self._session.parse(got[1]), pending):
                return message
        return None

    def _wait_s(self, pending: Pending, deadline: float | None) -> float:
        limit = EXIT_POLL_S
        if pending.replied:
            limit = min(limit, max(0.0, pending.idle_deadline - self._loop_time()))
        if deadline is not None:
            limit = min(limit, max(0.0, deadline - self._loop_time()))
        return limit

    def _accept(self, is_shell: bool, message: KernelMessage, pending: Pending) -> KernelMessage | None:
        if message.parent_id != pending.msg_id:
            return None
        if is_shell:
            pending.replied = True
            pending.idle_deadline = self._loop_time() + IDLE_GRACE_S
            return message
        if message.msg_type == "status":
            pending.idle = message.content.get("execution_state") == "idle"
            return None
        return message

    async def interrupt(self) -> None:
        if self._process is not None and self.is_alive:
            await self._link.signal_group(self._process.process.pid, signal.SIGINT)

    async def aclose(self) -> None:
        try:
            if self._channel is not None:
                self._channel.close()
                self._channel = None
            if self._process is not None:
                await self._process.aclose()
            if self._fds:
                remove_socket_files(self._fds[0], self._prefix)
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
        finally:
            self._slots.give()  # (even if cancelled: a slot must never leak)


def remove_socket_files(root: int, prefix: str) -> None:
    """Unlink a kernel's sockets and connection file (a sandbox's /tmp goes with it anyway; under
    the fake driver it is the host's). By name in a directory opened without following links."""
    directory, _, name = prefix.rpartition("/")
    try:
        fd = openat2(root, directory.lstrip("/"), os.O_PATH | os.O_DIRECTORY, IN_ROOT | RESOLVE_NO_SYMLINKS)
    except OSError:
        return
    try:
        for suffix in (*(f"-{port}" for port in range(1, 6)), ".json"):
            with contextlib.suppress(OSError):
                os.unlink(name + suffix, dir_fd=fd)
    finally:
        os.close(fd)
