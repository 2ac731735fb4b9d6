"""KernelChannel: the node's two sockets to one Jupyter kernel, on the event loop without zmq.asyncio.

Readiness comes from `loop.add_reader` on each socket's ZMQ_FD. That descriptor is a signal, not a
level: it fires when the socket *may* have news and is reset by reading ZMQ_EVENTS. So every wait
is preceded by draining both sockets, and a wake-up only reads EVENTS and resolves the waiter.
Measured against zmq.asyncio's Poller (a future per socket per poll): see docs/design.md.
"""

from __future__ import annotations

import asyncio

import zmq

from agentcell.server.interpreter.kernel import KernelExited


class KernelChannel:
    def __init__(self, shell: zmq.Socket[bytes], iopub: zmq.Socket[bytes]) -> None:
        self._shell = shell
        self._iopub = iopub
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._fds: list[int] = []
        for sock in (iopub, shell):
            fd = int(sock.getsockopt(zmq.FD))
            self._loop.add_reader(fd, self._wake, sock)
            self._fds.append(fd)

    def _wake(self, sock: zmq.Socket[bytes]) -> None:
        sock.getsockopt(zmq.EVENTS)  # resets the signal; messages stay queued until received
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

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
