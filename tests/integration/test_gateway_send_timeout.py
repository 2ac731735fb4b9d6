"""The gateway's send timeout (nginx's send_timeout and proxy_send_timeout): a client that takes
nothing of its response for the timeout is dropped, and its request ends as if it had gone (the
upstream connection closed, an in-process app told of the disconnect, the route's bookkeeping
run); one that reads slowly, however long the gateway stays held back by it, is not; an upstream
that takes none of a request body gets its request 504 and its connection dropped.

The engine tests run a `GatewayServer` in this process against scripted raw upstreams and an ASGI
app (the helpers of test_gateway_proxy); the last test runs the real server with
AGENTCELL_SEND_TIMEOUT_S=1 and a command's output stream (the API's own streaming, in-process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest
import uvloop

from agentcell.server.gateway.route import AppUpstream
from tests.conftest import AUTH, TEST_API_KEY, ServerFactory
from tests.integration.test_gateway_limits import read_response
from tests.integration.test_gateway_proxy import (
    Client,
    MiB,
    RawUpstream,
    Receive,
    Reply,
    Scope,
    Send,
    StaticRouter,
    raw_response,
    read_request,
    running_gateway,
)

TIMEOUT_S = 0.5
PATIENCE_S = 30 * TIMEOUT_S  # how long a test waits for something the timeout brings about
SLOW_READ = 128 * 1024  # what a slow reader takes at a time, every quarter timeout
CHUNK = bytes(MiB)


class EndlessUpstream(RawUpstream):
    """Answers its first connection with an endless chunked body, as fast as it is taken, and
    later ones with a short answer; `held_s` is the longest one of its writes waited (how long
    the gateway held it back at a stretch)."""

    def __init__(self) -> None:
        super().__init__(self._answer)
        self.held_s = 0.0

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n > 1:
            while await read_request(reader) is not None:
                writer.write(raw_response(200, b"served"))
            return
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
            began = time.monotonic()
            await writer.drain()
            self.held_s = max(self.held_s, time.monotonic() - began)


async def raw_client(address: object) -> socket.socket:
    """A client socket with a small receive buffer (so that what it reads shows at once)."""
    assert isinstance(address, tuple)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address)
    return sock


async def read_some(sock: socket.socket, size: int) -> int:
    """Read up to `size` bytes as they come; 0 once the gateway closed or dropped the connection."""
    loop = asyncio.get_running_loop()
    got = 0
    while got < size:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, size - got), PATIENCE_S)
        except ConnectionResetError:
            return got
        if not data:
            return got
        got += len(data)
    return got


async def read_to_the_end(sock: socket.socket) -> int:
    """Read what the gateway left in the socket's buffers until it is closed; how much that was."""
    total = 0
    while got := await read_some(sock, MiB):
        total += got
    return total


async def wait_until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not done():
        assert time.monotonic() < deadline, f"still waiting for {what} after {PATIENCE_S} s"
        await asyncio.sleep(0.02)


async def slow_then_silent_reader() -> None:
    """Reading a little every quarter timeout, the client holds the gateway back for longer than
    the timeout at a stretch and keeps its connection; once it reads nothing, the connection is
    dropped, the upstream's with it, and the request's bookkeeping runs (status 200 as far as it
    went). Only what the buffers held arrives after that; the gateway serves on."""
    upstream = EndlessUpstream()
    async with upstream:
        router = StaticRouter(upstream.address)
        async with running_gateway(router, send_timeout_s=TIMEOUT_S) as (_, address):
            with contextlib.closing(await raw_client(address)) as sock:
                loop = asyncio.get_running_loop()
                await loop.sock_sendall(sock, b"GET /stream HTTP/1.1\r\nHost: gw.test\r\n\r\n")
                began = time.monotonic()
                while upstream.held_s <= TIMEOUT_S:
                    assert await read_some(sock, SLOW_READ) == SLOW_READ, "a slow reader was cut off"
                    assert time.monotonic() - began < PATIENCE_S, "the gateway was never held back long"
                    await asyncio.sleep(TIMEOUT_S / 4)
                assert router.completions == []
                # ...and now it reads nothing
                await wait_until(lambda: bool(router.completions), "the request to end")
                assert router.completions[0][0] == 200
                await asyncio.wait_for(upstream.saw_close.wait(), PATIENCE_S)
                await read_to_the_end(sock)  # (an endless body: it ends only because it was cut)
            client = await Client.connect(address)
            assert bytes((await client.request("GET", "/again")).body) == b"served"
            await client.aclose()


async def test_an_app_streaming_to_a_client_that_reads_nothing_hears_a_disconnect() -> None:
    """The in-process (ASGI) path: the app's sends stop waiting and it is told the client left."""
    heard: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(64):  # (far more than every buffer on the way holds)
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        heard.append((await receive())["type"])

    router = StaticRouter(AppUpstream(app))
    async with running_gateway(router, send_timeout_s=TIMEOUT_S) as (_, address):
        with contextlib.closing(await raw_client(address)) as sock:
            await asyncio.get_running_loop().sock_sendall(sock, b"GET /big HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            await wait_until(lambda: bool(heard), "the app to hear the disconnect")
            assert heard == ["http.disconnect"]
            assert router.completions[0][0] == 200
            assert await read_to_the_end(sock) < 64 * MiB


async def tunnel_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    """An upstream that accepts an upgrade, then sends bytes as fast as they are taken."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: raw\r\nconnection: upgrade\r\n\r\n")
    while True:
        writer.write(CHUNK)
        await writer.drain()


async def test_a_tunnel_whose_client_reads_nothing_is_dropped() -> None:
    """An upgraded connection (a WebSocket) has no other time limit: this one ends it."""
    async with RawUpstream(tunnel_forever) as upstream:
        router = StaticRouter(upstream.address)
        async with running_gateway(router, send_timeout_s=TIMEOUT_S) as (_, address):
            with contextlib.closing(await raw_client(address)) as sock:
                upgrade = b"GET /ws HTTP/1.1\r\nHost: gw.test\r\nConnection: upgrade\r\nUpgrade: raw\r\n\r\n"
                await asyncio.get_running_loop().sock_sendall(sock, upgrade)  # ...and reads nothing
                await wait_until(lambda: bool(router.completions), "the tunnel to end")
                assert router.completions[0][0] == 101
                await asyncio.wait_for(upstream.saw_close.wait(), PATIENCE_S)
                await read_to_the_end(sock)


async def test_an_upstream_that_takes_none_of_the_body_gets_its_request_504() -> None:
    """nginx's proxy_send_timeout: the body stops moving because the upstream does not read it;
    the client gets the 504 envelope, the upstream connection is dropped, the client's closes."""
    total = 64 * MiB  # more than every buffer on the way holds
    answered = asyncio.Event()

    async def read_head_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        """An upstream that reads a request's head and nothing more until the client is answered;
        then what was sent, to its end (which comes only if the gateway closed the connection)."""
        await reader.readuntil(b"\r\n\r\n")
        await answered.wait()
        while await reader.read(MiB):
            pass

    async with RawUpstream(read_head_only) as upstream:
        router = StaticRouter(upstream.address)
        async with running_gateway(router, send_timeout_s=TIMEOUT_S) as (_, address):
            assert_upstream_timeout(await post_unread_body(address, total))
            answered.set()
            await asyncio.wait_for(upstream.saw_close.wait(), PATIENCE_S)
    assert router.completions[0][0] == 504


async def test_an_app_that_takes_none_of_the_body_gets_its_request_504() -> None:
    """The same for an in-process app (which then hears the client gone)."""
    heard: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await wait_until(lambda: bool(router.completions), "the request to end")  # (its body waits)
        while (message := await receive())["type"] == "http.request":
            assert message["more_body"], "the whole body came"
        heard.append(message["type"])

    router = StaticRouter(AppUpstream(app))
    async with running_gateway(router, send_timeout_s=TIMEOUT_S) as (_, address):
        assert_upstream_timeout(await post_unread_body(address, 8 * MiB))
        await wait_until(lambda: bool(heard), "the app to look at its request")
    assert heard == ["http.disconnect"]
    assert router.completions[0][0] == 504


async def post_unread_body(address: object, total: int) -> Reply:
    """POST a body of `total` bytes, as fast as it is taken, until the gateway answers."""
    assert isinstance(address, tuple)
    client = await Client.connect(address)
    client.send(b"POST /up HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % total)

    async def send_body() -> None:
        for _ in range(total // MiB):
            client.send(CHUNK)
            await client.writer.drain()

    sender = asyncio.create_task(send_body())
    try:
        return await asyncio.wait_for(client.reply(), PATIENCE_S)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await sender
        await client.aclose()


def assert_upstream_timeout(reply: Reply) -> None:
    assert reply.status == 504, reply.body
    envelope = reply.json()
    assert envelope["code"] == "timeout"
    assert f"took none of the request body for {TIMEOUT_S:g} s" in envelope["message"]
    assert reply.header(b"connection") == b"close"


UVLOOP_SCENARIOS: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
    "slow_then_silent_reader": slow_then_silent_reader,
    "app_stream": test_an_app_streaming_to_a_client_that_reads_nothing_hears_a_disconnect,
    "upstream_reads_no_body": test_an_upstream_that_takes_none_of_the_body_gets_its_request_504,
}


@pytest.mark.parametrize("name", sorted(UVLOOP_SCENARIOS))
def test_on_uvloop(name: str) -> None:
    """The production event loop (whose clock is read once per loop turn) and its transports; the
    slow reader only here (it takes seconds)."""
    uvloop.run(UVLOOP_SCENARIOS[name]())


# --- the real server --------------------------------------------------------------------------


def test_the_server_drops_a_client_that_stops_reading_a_command_stream(server_factory: ServerFactory) -> None:
    """AGENTCELL_SEND_TIMEOUT_S=1 on the real server: a foreground command's output stream (the
    API's own streaming response, endless) goes on to a client reading a little every quarter
    second for 2.5 s; once it reads nothing, the stream is cut off, the command is killed as for
    a client gone, and the sandbox and server go on serving."""
    server = server_factory(driver="fake", env={"AGENTCELL_SEND_TIMEOUT_S": "1"})
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as api:
        created = api.post("/v1/sandboxes", json={"timeout_s": 120})
        assert created.status_code == 201, created.text
        sandbox = created.json()["id"]
        body = json.dumps({"cmd": "yes agentcell", "timeout_s": 600}).encode()
        head = (
            b"POST /v1/sandboxes/%s/commands HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\n"
            b"content-type: application/json\r\ncontent-length: %d\r\n\r\n"
        ) % (sandbox.encode(), TEST_API_KEY.encode(), len(body))
        with contextlib.closing(socket.socket()) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(head + body)

            def running() -> int:
                listed = api.get(f"/v1/sandboxes/{sandbox}/processes")
                assert listed.status_code == 200, listed.text
                return len(listed.json()["processes"])

            poll_until(lambda: running() == 1, "the command to start")
            sock.settimeout(30)
            began = time.monotonic()
            while time.monotonic() - began < 2.5:
                got = 0
                while got < SLOW_READ:
                    data = sock.recv(SLOW_READ - got)
                    assert data, "a slow reader was cut off"
                    got += len(data)
                time.sleep(0.25)
            assert running() == 1
            # ...and now it reads nothing
            poll_until(lambda: running() == 0, "the command to be killed (its stream cut off)")
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(MiB):
                    pass
        ran = api.post(f"/v1/sandboxes/{sandbox}/commands", json={"cmd": "echo again"})
        assert ran.status_code == 200 and "again" in ran.text
        status, _, _ = read_response_from(server.port)
        assert status == 200


def poll_until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, f"still waiting for {what} after 30 s"
        time.sleep(0.05)


def read_response_from(port: int) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return read_response(sock)
