"""Sockets in a sandbox's network namespace, made by the server process itself: connected ones
for ingress, and listening ones for the egress proxy that the sandbox reaches on its loopback.

A socket belongs to the network namespace of the thread that creates it, and `setns(2)` with
CLONE_NEWNET moves only the calling thread. So one dedicated thread enters the instance's
namespace through the init's pidfd, creates the socket and returns to the server's namespace;
the non-blocking connect then runs on the event loop like any other socket's.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
from concurrent.futures import ThreadPoolExecutor

from agentcell.errors import Internal, NotRunning

CLONE_NEWNET = 0x40000000


class NetnsSockets:
    """Creates TCP sockets inside instances; owns its thread and an fd of the server's netns."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._host_netns: int | None = None
        self._libc = ctypes.CDLL(None, use_errno=True)

    async def connect(self, init_pidfd: int, port: int) -> socket.socket:
        """A connected non-blocking socket to 127.0.0.1:port in the init's network namespace.
        Raises ConnectionRefusedError when nothing listens there."""
        sock = await self._socket_inside(init_pidfd)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def listen(self, init_pidfd: int, port: int, backlog: int = 128) -> socket.socket:
        """A non-blocking socket listening on 127.0.0.1:port in the init's network namespace.
        Raises OSError (EADDRINUSE) when something there has the port already."""
        sock = await self._socket_inside(init_pidfd)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))  # bind and listen act in the socket's own namespace
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _socket_inside(self, init_pidfd: int) -> socket.socket:
        if self._executor is None:
            self._host_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="acell-netns")
        # A private copy: a concurrent stop() may close the instance's pidfd meanwhile.
        pidfd = os.dup(init_pidfd)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._make_socket, pidfd)
        finally:
            os.close(pidfd)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        if self._host_netns is not None:
            os.close(self._host_netns)
            self._host_netns = None

    def _make_socket(self, pidfd: int) -> socket.socket:
        assert self._host_netns is not None
        if self._libc.setns(pidfd, CLONE_NEWNET) != 0:
            raise NotRunning(f"the sandbox's network is gone: {os.strerror(ctypes.get_errno())}")
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            # Back home, or this thread would pin the instance's namespace after it stops.
            restored = self._libc.setns(self._host_netns, CLONE_NEWNET) == 0
        if not restored:
            sock.close()
            raise Internal(f"could not return to the server's network: {os.strerror(ctypes.get_errno())}")
        sock.setblocking(False)
        return sock
