"""The tool call as an agent makes it: the official `mcp` client (`mcp.Client` over Streamable
HTTP, with a session) calling the SDK server's tool, through the gateway, straight into the
instance, and through nginx in the instance's network namespace, interleaved call by call. Used by
`mcp_rtt` (`tool_call_sdk_client_*`): the lean client's figures give the hop's own cost, these
what it adds to a call as users see it (the SDK client's own work included on every path).

The direct and nginx paths reach the instance's loopback the way the gateway does, through sockets
made in its network namespace: an httpcore network backend hands them to the SDK's HTTP client.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpcore2
import httpx2
from httpcore2._backends.anyio import AnyIOStream
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from agentcell.server.sandbox.linux.netns import NetnsSockets

PATHS = ("direct", "gateway", "nginx")


class NetnsBackend(httpcore2.AsyncNetworkBackend):
    """TCP connections to 127.0.0.1:port in the network namespace of process `pid`."""

    def __init__(self, pid: int) -> None:
        self._pid = pid

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore2.AsyncNetworkStream:
        sockets, pidfd = NetnsSockets(), os.pidfd_open(self._pid)
        try:
            sock: socket.socket = await sockets.connect(pidfd, port)
        finally:
            os.close(pidfd)
            sockets.close()
        return AnyIOStream(await anyio.abc.SocketStream.from_socket(sock))

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Any = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise NotImplementedError("only TCP into the namespace")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def _inside(pid: int) -> httpx2.AsyncClient:
    """The SDK's HTTP client as `create_mcp_http_client` makes it, its connections made inside."""
    transport = httpx2.AsyncHTTPTransport()
    transport._pool = httpcore2.AsyncConnectionPool(network_backend=NetnsBackend(pid))
    http = create_mcp_http_client()
    http._transport = transport
    return http


@contextlib.asynccontextmanager
async def _streamable(url: str, pid: int | None = None) -> AsyncIterator[Any]:
    http = create_mcp_http_client() if pid is None else _inside(pid)
    async with http, streamable_http_client(url, http_client=http) as streams:
        yield streams


async def _whoami(client: Client) -> dict[str, Any]:
    result = await client.call_tool("whoami", {})
    assert not result.is_error, result
    answer: dict[str, Any] = json.loads(result.content[0].text)  # type: ignore[union-attr]
    return answer


async def round_trips(
    gateway_url: str, calls: int, locate: Any, nginx: Any, nginx_port: int, tmp: Path
) -> dict[str, list[float]]:
    """`calls` tool calls per path, the first tenth dropped (warm-up), in ms. `locate(instance)`
    gives the (pid, port) of the instance's server; `nginx(pid, port, tmp)` runs nginx in its
    namespace on `nginx_port` (a context manager)."""
    samples: dict[str, list[float]] = {path: [] for path in PATHS}
    async with Client(_streamable(gateway_url), mode="legacy") as through_gateway:
        pid, port = locate((await _whoami(through_gateway))["instance"])
        with nginx(pid, port, tmp):
            async with (
                Client(_streamable(f"http://127.0.0.1:{port}/mcp", pid), mode="legacy") as direct,
                Client(_streamable(f"http://127.0.0.1:{nginx_port}/mcp", pid), mode="legacy") as proxied,
            ):
                paths = (
                    (direct, samples["direct"]),
                    (through_gateway, samples["gateway"]),
                    (proxied, samples["nginx"]),
                )
                for _ in range(calls):
                    for client, into in paths:
                        started = time.perf_counter()
                        await _whoami(client)
                        into.append((time.perf_counter() - started) * 1000)
    return {path: ms[calls // 10 :] for path, ms in samples.items()}
