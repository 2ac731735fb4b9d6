"""KernelChannel: the node's two sockets to one Jupyter kernel, on the event loop without zmq.asyncio.

Readiness comes from `loop.add_reader` on each socket's ZMQ_FD. That descriptor is a signal, not a
level: it fires when the socket *may* have news and is reset by reading ZMQ_EVENTS. So every wait
is preceded by draining both sockets, and a wake-up only reads EVENTS and resolves the waiter.
Measured against zmq.asyncio's Poller (a future per socket per poll): see docs/design.md.

Iopub has no backpressure (a kernel's PUB drops what its subscriber does not take), so the node
holds little of it: at most IOPUB_HWM messages wait in the node (the rest wait in the kernel's own
queue, charged to its sandbox), and while no execution is in flight they are dropped as they come —
a thread left printing after its cell ended filled the server's memory at the speed it printed.
"""

from __future__ import annotations

import asyncio

import zmq

from agentcell.server.interpreter.kernel import KernelExited

IOPUB_HWM = 8
"""iopub messages the node queues for one kernel (each up to its max message size)"""
DROP_BATCH = 64
"""messages dropped per loop callback, so that a flood does not hold the event loop"""


class KernelChannel:
    def __init__(self, shell: zmq.Socket[bytes], iopub: zmq.Socket[bytes]) -> None:
        self._shell = shell
        self._iopub = iopub
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._dropping = False
        self._fds: list[int] = []
        for sock in (iopub, shell):
            fd = int(sock.getsockopt(zmq.FD))
            self._loop.add_reader(fd, self._wake, sock)
            self._fds.append(fd)

    def _wake(self, sock: zmq.Socket[bytes]) -> None:
        sock.getsockopt(zmq.EVENTS)  # resets the signal; messages stay queued until received
        if self._dropping:
            self._drop_iopub()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def drop_iopub(self, dropping: bool) -> None:
        """While `dropping` (no execution in flight), iopub messages are dropped as they arrive."""
        self._dropping = dropping
        if dropping:
            self._drop_iopub()

    def _drop_iopub(self) -> None:
        if self._closed or not self._dropping:
            return
        for _ in range(DROP_BATCH):
            try:
                self._iopub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
        self._loop.call_soon(self._drop_iopub)  # more queued: go on after other callbacks

    def send(self, frames: list[bytes]) -> None:
        self._raise_if_closed()
        try:
            self._shell.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            raise KernelExited("the python kernel is not taking requests") from None

    def _take(self) -> tuple[bool, list[bytes]] | None:
        """One queued message, iopub first (outputs before replies): (is_shell, frames)."""
        self._raise_if_closed()
        for is_shell, sock in ((False, self._iopub), (True, self._shell)):
            try:
                return is_shell, sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
        return None

    async def receive(self, timeout_s: float) -> tuple[bool, list[bytes]] | None:
        """The next message from either socket, or None after `timeout_s`."""
        deadline = self._loop.time() + timeout_s
        while (found := self._take()) is None:
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return None
            self._waiter = self._loop.create_future()
            try:
                if (found := self._take()) is not None:  # news that came before the waiter existed
                    return found
                await asyncio.wait_for(self._waiter, remaining)
            except TimeoutError:
                return None
            finally:
                self._waiter = None
        return found

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise KernelExited("the python kernel was stopped")

    def close(self) -> None:
        self._closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        for fd in self._fds:
            self._loop.remove_reader(fd)
        self._fds.clear()
        for sock in (self._shell, self._iopub):
            sock.close(linger=0)
