"""A minimal Python reverse proxy, as a baseline for the gateway's hop: bytes forwarded both ways
between each client connection and its own connection to one upstream, nothing parsed, a few
Python calls per read (uvloop). What the gateway does beyond it (routing, sessions, metering,
header rewriting, timeouts) is what its hop costs over this one.

    python -m bench.lean_proxy PID UPSTREAM_PORT LISTEN_PORT

listens on 127.0.0.1:LISTEN_PORT on the host and connects to 127.0.0.1:UPSTREAM_PORT in the
network namespace of process PID (as the gateway's own upstream sockets are made); prints
`ready` once it listens.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import cast

import uvloop

from agentcell.server.sandbox.linux.netns import NetnsSockets


class _Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self._client = client

    def data_received(self, data: bytes) -> None:
        self._client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._client.close()


class _Client(asyncio.Protocol):
    def __init__(self, sockets: NetnsSockets, pidfd: int, port: int) -> None:
        self._sockets, self._pidfd, self._port = sockets, pidfd, port
        self._upstream: asyncio.Transport | None = None
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        sock = await self._sockets.connect(self._pidfd, self._port)
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_connection(lambda: _Upstream(self._transport), sock=sock)
        for data in self._early:
            upstream.write(data)
        self._upstream = upstream

    def data_received(self, data: bytes) -> None:
        if self._upstream is None:
            self._early.append(data)
        else:
            self._upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._upstream is not None:
            self._upstream.close()


async def serve(pid: int, upstream_port: int, listen_port: int) -> None:
    sockets, pidfd = NetnsSockets(), os.pidfd_open(pid)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Client(sockets, pidfd, upstream_port), "127.0.0.1", listen_port
    )
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(*(int(arg) for arg in sys.argv[1:4])))
