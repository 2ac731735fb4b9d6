"""The ends of answers made in one turn of the event loop leave together, at the end of the turn,
and each request's bookkeeping (the route's `on_complete`, the access line) runs only after its
answer was written (`GatewayServer.flush_soon`).

Observed from the clients' side: each test's clients are plain sockets, and the route's
`on_complete` peeks at them (MSG_PEEK, without blocking) to see what they could already read.
Over loopback a write lands in the reader's socket before `send` returns.
"""

from __future__ import annotations

import asyncio
import socket

import uvloop

from agentcell.server.gateway.http1 import Forward, GatewayServer, RequestHead, Route
from tests.integration.test_gateway_proxy import RawUpstream, raw_response, read_request

CLIENTS = 2
BODY = b"answer %d"


class PeekingRouter:
    """Forwards everything; when a request completes, records what each client can read."""

    def __init__(self, upstream: RawUpstream) -> None:
        self.upstream = upstream
        self.clients: list[socket.socket] = []
        self.seen_at_completion: list[list[bytes]] = []

    def route_nowait(self, head: RequestHead) -> Route | None:
        return Forward(self.upstream.address, on_complete=self._complete)

    async def route(self, head: RequestHead) -> Route:
        return Forward(self.upstream.address, on_complete=self._complete)

    def _complete(self, status: int, bytes_in: int, bytes_out: int, duration_s: float) -> None:
        self.seen_at_completion.append([_peek(sock) for sock in self.clients])


def _peek(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return b""


def answering_together() -> RawUpstream:
    """An upstream that answers each connection's request only once all CLIENTS requests have
    arrived, then all answers in one go: the gateway reads them in one turn of its loop."""
    arrived: list[asyncio.StreamWriter] = []
    all_in = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if await read_request(reader) is None:
            return
        arrived.append(writer)
        if len(arrived) == CLIENTS:
            for i, each in enumerate(arrived):  # (no await in between: one step of this task)
                each.write(raw_response(200, BODY % i))
            all_in.set()
        await all_in.wait()
        await reader.read()  # until the gateway closes the connection

    return RawUpstream(handler)


async def answers_of_one_turn_are_all_written_before_any_bookkeeping() -> None:
    async with answering_together() as upstream:
        router = PeekingRouter(upstream)
        server = GatewayServer(router)
        await server.start("127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        try:
            address = server.addresses[0]
            for i in range(CLIENTS):
                sock = socket.socket()
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
                router.clients.append(sock)
                await loop.sock_sendall(sock, b"GET /%d HTTP/1.1\r\nHost: gw.test\r\n\r\n" % i)
            for i, sock in enumerate(router.clients):
                answer = await asyncio.wait_for(loop.sock_recv(sock, 65536), 10)
                assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(BODY % i), answer
            assert len(router.seen_at_completion) == CLIENTS
            for seen in router.seen_at_completion:
                # every client's whole answer was there already when the first one was counted
                assert [got.endswith(BODY % i) for i, got in enumerate(seen)] == [True] * CLIENTS, seen
        finally:
            for sock in router.clients:
                sock.close()
            await server.aclose(drain_timeout_s=2)


async def test_answers_of_one_turn_are_all_written_before_any_bookkeeping() -> None:
    await answers_of_one_turn_are_all_written_before_any_bookkeeping()


def test_answers_of_one_turn_are_all_written_before_any_bookkeeping_on_uvloop() -> None:
    """The production event loop."""
    uvloop.run(answers_of_one_turn_are_all_written_before_any_bookkeeping())
