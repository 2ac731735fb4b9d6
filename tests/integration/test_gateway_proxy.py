"""The gateway's HTTP engine against real upstreams over real sockets: framing, streaming, upgrades,
pooling, timeouts and errors.

No mocks: every test starts its own upstream (uvicorn running an ASGI app, a raw asyncio server
when the test needs byte-level control, or a websockets server) and speaks raw HTTP/1.1 to a
`GatewayServer` on 127.0.0.1 port 0 or a Unix socket in tmp_path. The tests run on the default
asyncio loop; `test_on_uvloop` runs most of them again on uvloop, the loop production uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import pytest
import uvicorn
import uvloop
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

from agentcell.server.gateway.http1 import (
    AccessRecord,
    AppUpstream,
    Forward,
    GatewayServer,
    RequestHead,
    Respond,
    Route,
    SocketUpstream,
    TcpUpstream,
    UnixUpstream,
    UpstreamAddress,
)

MiB = 1024 * 1024
Address = tuple[str, int] | str
Scope = MutableMapping[str, Any]  # as the gateway's AsgiApp takes them
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# --- routers ----------------------------------------------------------------------------------


class StaticRouter:
    """Forwards everything to one upstream, except paths a test answers or breaks on purpose."""

    def __init__(self, upstream: UpstreamAddress | AppUpstream, **forward: Any) -> None:
        self.upstream = upstream
        self.forward = forward
        self.answers: dict[bytes, Respond] = {}
        self.failing: set[bytes] = set()
        self.completions: list[tuple[int, int, int, float]] = []

    async def route(self, head: RequestHead) -> Route:
        return self.route_now(head)

    def route_now(self, head: RequestHead) -> Route:
        if head.raw_path in self.failing:
            raise RuntimeError("the router broke")
        answer = self.answers.get(head.raw_path)
        if answer is not None:
            return answer
        context = {"session": "ses_test", "path": head.raw_path.decode()}
        return Forward(self.upstream, on_complete=self._done, context=context, **self.forward)

    def _done(self, status: int, bytes_in: int, bytes_out: int, duration_s: float) -> None:
        self.completions.append((status, bytes_in, bytes_out, duration_s))


class NowaitRouter(StaticRouter):
    """The same, answering on the engine's task-free path."""

    def route_nowait(self, head: RequestHead) -> Route | None:
        return self.route_now(head)


class PinningRouter(StaticRouter):
    """Answers on the task-free path with a `reuse` on each Forward (a warm session's pin, as the
    scheduler's router makes one): records which path routed each request, and in what order
    each was leased (`on_routed`) and given back (`on_complete`)."""

    def __init__(self, upstream: UpstreamAddress) -> None:
        super().__init__(upstream)
        self.events: list[str] = []

    def route_nowait(self, head: RequestHead) -> Route | None:
        self.events.append("routed")
        return self._pinned()

    def _pinned(self) -> Forward:
        return Forward(
            self.upstream,
            on_complete=self._complete,
            on_routed=lambda: self.events.append("leased"),
            reuse=self._reuse,
        )

    def _reuse(self, head: RequestHead) -> Route | None:
        if head.raw_path == b"/boom":
            raise RuntimeError("the pin broke")
        if head.raw_path != b"/echo":  # (inputs other than the pinned ones)
            return None
        self.events.append("reused")
        return self._pinned()

    def _complete(self, status: int, bytes_in: int, bytes_out: int, duration_s: float) -> None:
        self.events.append(f"done {status}")


class SlowRouter(StaticRouter):
    """Takes its time (a cold start); records whether it was cancelled."""

    def __init__(self, upstream: UpstreamAddress, delay_s: float) -> None:
        super().__init__(upstream)
        self.delay_s = delay_s
        self.cancelled = 0

    async def route(self, head: RequestHead) -> Route:
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.route_now(head)


@contextlib.asynccontextmanager
async def running_gateway(
    router: StaticRouter, *, path: str | None = None, **options: Any
) -> AsyncIterator[tuple[GatewayServer, Address]]:
    server = GatewayServer(router, **options)
    if path is not None:
        await server.start(path=path)
    else:
        await server.start("127.0.0.1", 0)
    try:
        yield server, server.addresses[0]
    finally:
        await server.aclose(drain_timeout_s=2)
        assert server.connection_count == 0, "client connections left open"
        assert server.exchanges_in_flight == 0, "exchanges never finished"


# --- upstreams --------------------------------------------------------------------------------


@dataclass
class AppState:
    release: asyncio.Event = field(default_factory=asyncio.Event)
    clients: set[tuple[str, int]] = field(default_factory=set)


async def read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


async def send_json(send: Send, payload: object, status: int = 200) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def make_app(state: AppState) -> Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]]:
    """An instance program: echo, chunked, SSE, slow and big responses."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        state.clients.add(scope["client"])
        path = scope["path"]
        if path == "/chunked":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"one,", b"two,", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/sse":
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"data: first\n\n", "more_body": True})
            await state.release.wait()
            await send({"type": "http.response.body", "body": b"data: second\n\n"})
        elif path == "/own-id":  # an upstream that names the request itself
            headers = [(b"x-request-id", b"upstream-7"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/big":
            mib = int(scope["query_string"].split(b"=")[1])
            chunk = b"b" * MiB
            headers = [(b"content-length", b"%d" % (mib * MiB))]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for _ in range(mib):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            if path == "/slow":
                await asyncio.sleep(0.3)
            body = await read_body(receive)
            seen = {k.decode(): v.decode() for k, v in scope["headers"]}
            await send_json(
                send,
                {
                    "method": scope["method"],
                    "path": path,
                    "query": scope["query_string"].decode(),
                    "headers": seen,
                    "body": body.decode(errors="replace")[:200],
                    "body_len": len(body),
                },
            )

    return app


@contextlib.asynccontextmanager
async def uvicorn_upstream(state: AppState, *, uds: str | None = None) -> AsyncIterator[UpstreamAddress]:
    config = uvicorn.Config(
        make_app(state),
        host="127.0.0.1",
        port=0,
        uds=uds,
        loop="none",
        http="httptools",
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        if uds is not None:
            yield UnixUpstream(uds)
        else:
            yield TcpUpstream("127.0.0.1", server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await task


@dataclass
class RawRequest:
    method: bytes
    target: bytes
    headers: dict[bytes, bytes]
    body: bytes


async def read_request(reader: asyncio.StreamReader) -> RawRequest | None:
    """One request off a raw upstream connection (Content-Length or chunked body)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head[:-4].split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        parts = []
        while size := int((await reader.readline()).split(b";")[0], 16):
            parts.append((await reader.readexactly(size + 2))[:-2])
        while (await reader.readline()) != b"\r\n":
            pass
        body = b"".join(parts)
    return RawRequest(method, target, headers, body)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawUpstream:
    """A scripted upstream with byte-level control; counts and watches its connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.closed = 0
        self.saw_close = asyncio.Event()
        self.saw_connection = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:  # handlers see EOF or a broken pipe and return
            writer.transport.abort()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 5)
        await self._server.wait_closed()

    @property
    def address(self) -> TcpUpstream:
        assert self._server is not None
        return TcpUpstream("127.0.0.1", self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.accepted += 1
        self.saw_connection.set()
        try:
            await self.handler(reader, writer, self.accepted)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.closed += 1
            self.saw_close.set()
            self._tasks.discard(task)


def raw_response(status: int, body: bytes, *headers: bytes) -> bytes:
    extra = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)


# --- a raw HTTP/1.1 client --------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """One client connection: write raw bytes, read parsed replies (pipelining-safe)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.replies: deque[Reply] = deque()
        self.current = Reply()
        self.keep_body = True
        self.body_bytes = 0
        self.read_pause_s = 0.0  # a slow reader, to make the gateway apply backpressure
        self._parser = httptools.HttpResponseParser(self)

    @classmethod
    async def connect(cls, address: Address) -> Client:
        if isinstance(address, str):
            reader, writer = await asyncio.open_unix_connection(address)
        else:
            reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    def on_message_begin(self) -> None:
        self.current = Reply()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.current.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.keep_body:
            self.current.body += body

    def on_message_complete(self) -> None:
        self.replies.append(self.current)

    async def pump(self) -> bool:
        data = await asyncio.wait_for(self.reader.read(MiB), 10)
        if data:
            self._parser.feed_data(data)
            if self.read_pause_s:
                await asyncio.sleep(self.read_pause_s)
        return bool(data)

    async def reply(self) -> Reply:
        while not self.replies:
            if not await self.pump():
                raise EOFError("the gateway closed the connection")
        return self.replies.popleft()

    def send(self, raw: bytes) -> None:
        self.writer.write(raw)

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: Sequence[str] = ()
    ) -> Reply:
        lines = [f"{method} {target} HTTP/1.1", "Host: gw.test", *headers]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return await self.reply()

    async def at_eof(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@contextlib.asynccontextmanager
async def peak_rss() -> AsyncIterator[list[int]]:
    """Samples this process's resident memory while the block runs: [baseline, peak]."""
    found = [rss_bytes(), rss_bytes()]

    async def sample() -> None:
        while True:
            found[1] = max(found[1], rss_bytes())
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    try:
        yield found
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        found[1] = max(found[1], rss_bytes())


# --- plain requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("router_kind", [StaticRouter, NowaitRouter])
async def test_get_and_post_reach_the_upstream_and_come_back(
    tmp_path: Path, router_kind: type[StaticRouter]
) -> None:
    """Method, path, query and body arrive intact; the route's extra response headers are added."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream:
        router = router_kind(upstream, add_response_headers=[(b"x-served-by", b"gw")])
        async with running_gateway(router) as (_, address):
            client = await Client.connect(address)
            got = await client.request("GET", "/echo?x=1&y=%20")
            assert got.status == 200 and got.header(b"x-served-by") == b"gw"
            echo = got.json()
            assert (echo["method"], echo["path"], echo["query"]) == ("GET", "/echo", "x=1&y=%20")
            got = await client.request("POST", "/echo", body=b"hello upstream")
            assert got.json()["body"] == "hello upstream"
            await client.aclose()
    assert [c[0] for c in router.completions] == [200, 200]


async def test_hop_by_hop_headers_stop_at_the_gateway(tmp_path: Path) -> None:
    """Connection, the headers it names, Keep-Alive, TE and Proxy-* never reach the upstream."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream, running_gateway(StaticRouter(upstream)) as (_, address):
        client = await Client.connect(address)
        got = await client.request(
            "GET",
            "/echo",
            headers=[
                "Connection: keep-alive, X-Secret",
                "X-Secret: drop me",
                "Keep-Alive: timeout=5",
                "TE: trailers",
                "Proxy-Authorization: Basic Zm9v",
                "X-Kept: yes",
            ],
        )
        seen = got.json()["headers"]
        for name in ("x-secret", "keep-alive", "te", "proxy-authorization"):
            assert name not in seen, name
        assert seen["x-kept"] == "yes"
        await client.aclose()


async def test_forwarded_headers_describe_the_client(tmp_path: Path) -> None:
    """X-Forwarded-For/Proto/Host are set by the gateway; a client's own values are not trusted."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream:
        async with running_gateway(StaticRouter(upstream)) as (_, address):
            client = await Client.connect(address)
            got = await client.request("GET", "/echo", headers=["X-Forwarded-For: 6.6.6.6"])
            seen = got.json()["headers"]
            assert seen["x-forwarded-for"] == "127.0.0.1"
            assert seen["x-forwarded-proto"] == "http"
            assert seen["x-forwarded-host"] == "gw.test"
            await client.aclose()
        async with running_gateway(StaticRouter(upstream), trust_forwarded=True) as (_, address):
            client = await Client.connect(address)
            got = await client.request("GET", "/echo", headers=["X-Forwarded-For: 10.0.0.1"])
            assert got.json()["headers"]["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
            await client.aclose()


async def test_one_request_id_reaches_the_upstream_and_the_access_log(tmp_path: Path) -> None:
    """A client's usable x-request-id is kept; a missing or unusable one is replaced by the
    gateway's own; either way the upstream sees, and the client gets back, the id the access log
    records (unless the upstream answers with an id of its own)."""
    state = AppState()
    records: list[AccessRecord] = []
    sent = [["X-Request-Id: trace-42"], [], ["X-Request-Id: " + "x" * 65], ["X-Request-Id: a\tb"]]
    async with (
        uvicorn_upstream(state) as upstream,
        running_gateway(StaticRouter(upstream), access_log=records.append) as (_, address),
    ):
        client = await Client.connect(address)
        replies = [await client.request("GET", "/echo", headers=h) for h in sent]
        own = await client.request("GET", "/own-id", headers=["X-Request-Id: trace-43"])
        await client.aclose()
    ids = [record.head.request_id for record in records[:4]]
    assert [reply.json()["headers"]["x-request-id"] for reply in replies] == ids
    assert [reply.header(b"x-request-id") for reply in replies] == [i.encode() for i in ids]
    assert [v for k, v in own.headers if k.lower() == b"x-request-id"] == [b"upstream-7"]
    assert ids[0] == "trace-42"
    assert all(i.startswith("req_") for i in ids[1:]) and len(set(ids)) == 4


async def test_upstream_connection_is_reused_across_requests(tmp_path: Path) -> None:
    """Sequential requests, even from different client connections, share one upstream connection."""
    state = AppState()
    async with (
        uvicorn_upstream(state) as upstream,
        running_gateway(StaticRouter(upstream)) as (server, address),
    ):
        for _ in range(3):
            client = await Client.connect(address)
            for _ in range(10):
                assert (await client.request("GET", "/echo")).status == 200
            await client.aclose()
        assert len(state.clients) == 1, state.clients
        assert server.pool.idle_count() == 1


async def test_a_forward_s_reuse_routes_its_connection_s_next_request(tmp_path: Path) -> None:
    """The connection asks the last Forward's `reuse` first; when that declines, the router routes
    (and its new Forward pins the connection again). A new connection starts unpinned. Each
    request's `on_routed` runs once, before its `on_complete`. A pin that fails is a router that
    failed: a 500 envelope, and the connection goes on."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream:
        router = PinningRouter(upstream)
        async with running_gateway(router) as (_, address):
            client = await Client.connect(address)
            for target in ("/echo", "/echo", "/echo?other=1", "/other", "/echo"):
                assert (await client.request("GET", target)).status == 200
            broken = await client.request("GET", "/boom")
            assert broken.status == 500 and broken.json()["code"] == "internal", broken.body
            assert (await client.request("GET", "/echo")).status == 200
            other = await Client.connect(address)
            assert (await other.request("GET", "/echo")).status == 200
            await client.aclose()
            await other.aclose()
    one = ["leased", "done 200"]
    assert router.events == [
        *("routed", *one),
        *("reused", *one),
        *("reused", *one),  # (the query is not the pin's business: the path is)
        *("routed", *one),
        *("reused", *one),
        *("reused", *one),  # (after the failed pin: it is still the connection's)
        *("routed", *one),
    ]


async def test_head_request_then_keep_alive(tmp_path: Path) -> None:
    """A HEAD response has headers but no body, and the connections stay usable after it."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream, running_gateway(StaticRouter(upstream)) as (_, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"HEAD /echo HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200") and b"content-length" in head.lower()
        client = Client(reader, writer)
        got = await client.request("GET", "/echo")
        assert got.json()["method"] == "GET"
        await client.aclose()


# --- framing ----------------------------------------------------------------------------------


async def test_chunked_request_and_chunked_response(tmp_path: Path) -> None:
    """A chunked upload arrives whole; a chunked response is re-chunked to the client."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream, running_gateway(StaticRouter(upstream)) as (_, address):
        client = await Client.connect(address)
        client.send(b"POST /echo HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"alpha-", b"beta-", b"gamma"):
            client.send(b"%x\r\n%s\r\n" % (len(part), part))
            await asyncio.sleep(0.01)
        client.send(b"0\r\n\r\n")
        echo = (await client.reply()).json()
        assert echo["body"] == "alpha-beta-gamma"
        assert echo["headers"]["transfer-encoding"] == "chunked"
        got = await client.request("GET", "/chunked")
        assert got.header(b"transfer-encoding") == b"chunked"
        assert bytes(got.body) == b"one,two,three"
        await client.aclose()


async def trailers_then_plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    """First a chunked response with a trailer, then a plain one on the same connection."""
    await read_request(reader)
    writer.write(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\nx-trailer: t\r\n\r\n"
    )
    await read_request(reader)
    writer.write(raw_response(200, b"second"))
    await read_request(reader)


async def test_response_trailers_do_not_leak_into_the_next_response(tmp_path: Path) -> None:
    """A chunked response's trailer is dropped, never mistaken for a header of the next response."""
    upstream = RawUpstream(trailers_then_plain)
    async with upstream, running_gateway(StaticRouter(upstream.address)) as (_, address):
        client = await Client.connect(address)
        assert bytes((await client.request("GET", "/one")).body) == b"body"
        second = await client.request("GET", "/two")
        assert bytes(second.body) == b"second" and second.header(b"x-trailer") is None
        await client.aclose()


async def test_http10_client_and_connection_close(tmp_path: Path) -> None:
    """HTTP/1.0 gets an unchunked body ended by close; `Connection: close` is honoured."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream, running_gateway(StaticRouter(upstream)) as (_, address):
        reader, writer = await asyncio.open_connection(*address)
        writer.write(b"GET /chunked HTTP/1.0\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)  # to EOF: the gateway closes
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head
        assert body == b"one,two,three"
        writer.close()
        client = await Client.connect(address)
        got = await client.request("GET", "/echo", headers=["Connection: close"])
        assert got.status == 200 and got.header(b"connection") == b"close"
        assert await client.at_eof()
        await client.aclose()


async def test_expect_100_continue(tmp_path: Path) -> None:
    """The upstream's 100 Continue reaches the client before it sends the body."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream, running_gateway(StaticRouter(upstream)) as (_, address):
        client = await Client.connect(address)
        client.send(
            b"POST /echo HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert (await client.reply()).status == 100
        client.send(b"hello")
        got = await client.reply()
        assert got.status == 200 and got.json()["body"] == "hello"
        await client.aclose()


async def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    """Three requests in one write, the first one slow: three replies, in request order."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream, running_gateway(StaticRouter(upstream)) as (_, address):
        client = await Client.connect(address)
        client.send(
            b"GET /slow HTTP/1.1\r\nHost: gw.test\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\n\r\nbody"
            b"GET /echo?third HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        )
        first, second, third = [(await client.reply()).json() for _ in range(3)]
        assert first["path"] == "/slow"
        assert (second["path"], second["body"]) == ("/echo", "body")
        assert third["query"] == "third"
        await client.aclose()


async def test_many_concurrent_clients_each_get_their_own_answers(tmp_path: Path) -> None:
    """50 clients x 20 requests at once, some walking away mid-response: no answer goes astray."""
    state = AppState()
    async with (
        uvicorn_upstream(state) as upstream,
        running_gateway(StaticRouter(upstream)) as (server, address),
    ):

        async def one_client(n: int) -> None:
            client = await Client.connect(address)
            for i in range(20):
                body = f"client {n} request {i}".encode()
                if n % 10 == 0 and i == 10:  # walk away with a request in flight
                    client.send(b"GET /slow HTTP/1.1\r\nHost: gw.test\r\n\r\n")
                    break
                got = await client.request("POST", f"/echo?n={n}", body=body)
                assert got.json()["body"] == body.decode()
            await client.aclose()

        await asyncio.gather(*(one_client(n) for n in range(50)))
        assert len(state.clients) <= 50
    assert server.connection_count == 0


# --- streaming --------------------------------------------------------------------------------


async def test_body_sent_while_routing_is_held_then_forwarded(tmp_path: Path) -> None:
    """A body that arrives before the router answers is kept (reading paused) and sent after."""
    state = AppState()
    async with (
        uvicorn_upstream(state) as upstream,
        running_gateway(SlowRouter(upstream, 0.2)) as (_, address),
    ):
        client = await Client.connect(address)
        body = bytes(range(256)) * 4096  # 1 MiB, more than the gateway holds before pausing
        got = await client.request("POST", "/echo", body=body)
        assert got.json()["body_len"] == len(body)
        await client.aclose()


async def test_slow_router_times_out_and_is_cancelled(tmp_path: Path) -> None:
    """The request deadline covers routing too: 504, and the router's call is cancelled."""
    router = SlowRouter(TcpUpstream("127.0.0.1", 9), 5)
    async with running_gateway(router, request_timeout_s=0.2) as (_, address):
        client = await Client.connect(address)
        got = await client.request("GET", "/cold")
        assert got.status == 504 and got.json()["code"] == "timeout"
        await client.aclose()
    assert router.cancelled == 1


async def test_sse_event_arrives_before_the_response_ends(tmp_path: Path) -> None:
    """The first server-sent event is forwarded while the upstream is still holding the stream."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream, running_gateway(StaticRouter(upstream)) as (_, address):
        client = await Client.connect(address)
        client.send(b"GET /sse HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        while b"data: first\n\n" not in client.current.body:
            assert await client.pump()
        assert not client.replies and not state.release.is_set()
        state.release.set()
        got = await client.reply()
        assert bytes(got.body) == b"data: first\n\ndata: second\n\n"
        await client.aclose()


async def test_websocket_echo_through_the_gateway(tmp_path: Path) -> None:
    """An upgrade is forwarded; after the 101 the gateway splices bytes both ways."""
    records: list[AccessRecord] = []

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with ws_serve(echo, "127.0.0.1", 0, compression=None) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        router = StaticRouter(TcpUpstream("127.0.0.1", port))
        async with running_gateway(router, access_log=records.append) as (_, address):
            assert isinstance(address, tuple)
            async with ws_connect(f"ws://{address[0]}:{address[1]}/ws", compression=None) as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                await ws.send(b"\x00" * 100_000)
                assert await ws.recv() == b"\x00" * 100_000
            for _ in range(100):
                if records:
                    break
                await asyncio.sleep(0.02)
    assert records and records[0].status == 101
    assert records[0].bytes_in > 100_000 and records[0].bytes_out > 100_000


async def download_slowly(address: Address, mib: int) -> int:
    """GET /big?mib=… as a slower reader that keeps nothing: how much this process's RSS grew."""
    client = await Client.connect(address)
    client.keep_body = False
    client.read_pause_s = 0.0005
    async with peak_rss() as rss:
        got = await client.request("GET", f"/big?mib={mib}")
    assert got.status == 200 and client.body_bytes == mib * MiB
    await client.aclose()
    return rss[1] - rss[0]


async def test_large_download_streams_with_bounded_memory(tmp_path: Path) -> None:
    """A 256 MiB response to a slower reader passes through whole; the gateway holds none of it."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream, running_gateway(StaticRouter(upstream)) as (_, address):
        growth = await download_slowly(address, 256)
        assert growth < 64 * MiB, f"RSS grew by {growth // MiB} MiB"


async def count_upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    """A raw upstream that counts a streamed request body, reading slower than the client sends."""
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        seen = 0
        while seen < length:
            seen += len(await reader.read(min(MiB, length - seen)))
            await asyncio.sleep(0.0002)
        body = json.dumps({"received": seen}).encode()
        writer.write(raw_response(200, body))


async def test_one_gib_upload_streams_with_bounded_memory(tmp_path: Path) -> None:
    """A 1 GiB upload streams through: the gateway's memory stays flat (backpressure works)."""
    async with (
        RawUpstream(count_upload) as upstream,
        running_gateway(StaticRouter(upstream.address)) as (
            _,
            address,
        ),
    ):
        client = await Client.connect(address)
        chunk = b"u" * MiB
        async with peak_rss() as rss:
            client.send(
                b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % (1024 * MiB)
            )
            for _ in range(1024):
                client.send(chunk)
                await client.writer.drain()
            got = await client.reply()
        assert got.json() == {"received": 1024 * MiB}
        assert rss[1] - rss[0] < 64 * MiB, f"RSS grew by {(rss[1] - rss[0]) // MiB} MiB"
        await client.aclose()


# --- failures and cancellation ----------------------------------------------------------------


async def stream_until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    """Answer with an endless chunked stream; return once the peer closes the connection."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    eof = asyncio.ensure_future(reader.read())
    while not eof.done():
        writer.write(b"6\r\ntick!\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.01)


async def test_client_disconnect_closes_the_upstream_connection(tmp_path: Path) -> None:
    """A client that goes away mid-response cancels the upstream request: its connection closes."""
    async with RawUpstream(stream_until_closed) as upstream:
        router = StaticRouter(upstream.address)
        async with running_gateway(router) as (server, address):
            client = await Client.connect(address)
            client.send(b"GET /stream HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            while b"tick!" not in client.current.body:
                assert await client.pump()
            await client.aclose()
            await asyncio.wait_for(upstream.saw_close.wait(), 5)
            assert server.pool.idle_count() == 0
            for _ in range(50):
                if router.completions:
                    break
                await asyncio.sleep(0.02)
            assert router.completions[0][0] == 200 and router.completions[0][2] > 0


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    await read_request(reader)
    await reader.read()  # until the gateway gives up and closes


async def test_timeout_gives_a_504_envelope_and_keeps_the_client(tmp_path: Path) -> None:
    """No response head in time: 504 with the error envelope; the upstream connection is dropped."""
    async with RawUpstream(never_answer) as upstream:
        router = StaticRouter(upstream.address)
        router.answers[b"/local"] = Respond(204)
        async with running_gateway(router, request_timeout_s=0.3) as (server, address):
            client = await Client.connect(address)
            got = await client.request("GET", "/hang")
            assert got.status == 504
            envelope = got.json()
            assert envelope["code"] == "timeout" and envelope["request_id"].startswith("req_")
            assert got.header(b"x-request-id") == envelope["request_id"].encode()
            await asyncio.wait_for(upstream.saw_close.wait(), 5)
            assert (await client.request("GET", "/local")).status == 204  # still alive
            await client.aclose()
            assert server.pool.idle_count() == 0
    assert router.completions[0][0] == 504


async def test_client_disconnect_before_the_response_head(tmp_path: Path) -> None:
    """A client gone while the upstream is thinking: upstream connection closed, status 499."""
    async with RawUpstream(never_answer) as upstream:
        router = StaticRouter(upstream.address)
        async with running_gateway(router) as (_, address):
            client = await Client.connect(address)
            client.send(b"GET /hang HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            await asyncio.wait_for(upstream.saw_connection.wait(), 5)
            await asyncio.sleep(0.05)
            await client.aclose()
            await asyncio.wait_for(upstream.saw_close.wait(), 5)
    assert router.completions[0][0] == 499


async def test_router_answers_and_router_failures(tmp_path: Path) -> None:
    """Respond routes are written as given; a raising router gives a 500 envelope, not a dead socket."""
    router = StaticRouter(TcpUpstream("127.0.0.1", 9))
    router.answers[b"/nope"] = Respond(404, [(b"content-type", b"application/json")], b'{"code":"not_found"}')
    router.failing.add(b"/boom")
    async with running_gateway(router) as (_, address):
        client = await Client.connect(address)
        got = await client.request("GET", "/nope")
        assert (got.status, got.json()) == (404, {"code": "not_found"})
        got = await client.request("GET", "/boom")
        assert got.status == 500 and got.json()["code"] == "internal"
        got = await client.request("GET", "/nope")
        assert got.status == 404
        await client.aclose()


async def test_refused_upload_still_gets_its_answer(tmp_path: Path) -> None:
    """An answer given before the request body ends reaches the client, then the gateway closes."""
    router = StaticRouter(TcpUpstream("127.0.0.1", 9))
    router.answers[b"/upload"] = Respond(413, body=b"too large")
    async with running_gateway(router) as (_, address):
        client = await Client.connect(address)
        client.send(b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % (64 * MiB))

        async def pour() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(64):
                    client.send(b"x" * MiB)
                    await client.writer.drain()

        pouring = asyncio.create_task(pour())
        got = await client.reply()
        assert (got.status, bytes(got.body), got.header(b"connection")) == (413, b"too large", b"close")
        await asyncio.wait_for(pouring, 10)
        await client.aclose()


async def test_unreachable_upstream_gives_502(tmp_path: Path) -> None:
    """Nothing listens at the routed address: 502 envelope; on_complete still sees the request."""
    router = StaticRouter(UnixUpstream(str(tmp_path / "nobody.sock")))
    async with running_gateway(router) as (_, address):
        client = await Client.connect(address)
        got = await client.request("GET", "/x")
        assert got.status == 502 and got.json()["code"] == "unavailable"
        await client.aclose()
    assert router.completions[0][0] == 502


async def close_without_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    await read_request(reader)


async def test_the_router_words_an_upstream_lost_before_answering(tmp_path: Path) -> None:
    """`explain_loss` replaces the engine's words for an upstream that closed before answering or
    took no connection (an instance stopped on purpose); returning None keeps them."""
    says: list[str | None] = ["instance ins_1 stopped while this request was on its way"]

    def explain() -> str | None:
        return says[0]

    async with RawUpstream(close_without_answering) as upstream:
        closing = StaticRouter(upstream.address, explain_loss=explain)
        async with running_gateway(closing) as (_, address):
            client = await Client.connect(address)
            got = await client.request("GET", "/x")
            assert got.status == 502 and got.json()["message"] == says[0]
            await client.aclose()
    refusing = StaticRouter(UnixUpstream(str(tmp_path / "nobody.sock")), explain_loss=explain)
    async with running_gateway(refusing) as (_, address):
        client = await Client.connect(address)
        assert (await client.request("GET", "/x")).json()["message"] == says[0]
        says[0] = None
        got = await client.request("GET", "/x")
        assert got.json()["message"] == "the upstream is not accepting connections"
        await client.aclose()


async def test_malformed_request_gets_400_and_close(tmp_path: Path) -> None:
    """Bytes that are not HTTP get a 400 envelope and the connection is closed."""
    router = StaticRouter(TcpUpstream("127.0.0.1", 9))
    async with running_gateway(router) as (_, address):
        client = await Client.connect(address)
        client.send(b"THIS IS NOT HTTP\r\n\r\n")
        got = await client.reply()
        assert got.status == 400 and got.json()["code"] == "invalid_argument"
        assert await client.at_eof()
        await client.aclose()


async def test_malformed_chunked_body_gets_400(tmp_path: Path) -> None:
    """A broken chunked body gets a 400 envelope, whether it arrives with the head or later."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream, running_gateway(StaticRouter(upstream)) as (_, address):
        head = b"POST /echo HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        for later in (False, True):
            client = await Client.connect(address)
            client.send(head if later else head + b"zz\r\nnot hex\r\n")
            if later:
                await asyncio.sleep(0.05)  # routed and forwarded by now
                client.send(b"5\r\nhello\r\nzz\r\nnot hex\r\n")
            got = await client.reply()
            assert got.status == 400 and "chunk" in got.json()["message"].lower(), got.body
            assert await client.at_eof()
            await client.aclose()


async def test_oversized_head_gets_431(tmp_path: Path) -> None:
    """A request head over max_header_bytes gets 431 and the connection is closed."""
    router = StaticRouter(TcpUpstream("127.0.0.1", 9))
    async with running_gateway(router, max_header_bytes=4096) as (_, address):
        client = await Client.connect(address)
        client.send(b"GET / HTTP/1.1\r\nHost: gw.test\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        got = await client.reply()
        assert got.status == 431
        assert await client.at_eof()
        await client.aclose()


async def close_on_second_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    """Serve one request per connection, then drop the connection when the next one arrives."""
    request = await read_request(reader)
    assert request is not None
    writer.write(raw_response(200, b"connection %d" % n))
    await read_request(reader)


async def test_stale_pooled_connection_is_retried_once(tmp_path: Path) -> None:
    """A pooled connection the upstream dropped under a new request: resent on a fresh one."""
    upstream = RawUpstream(close_on_second_request)
    async with upstream, running_gateway(StaticRouter(upstream.address)) as (_, address):
        client = await Client.connect(address)
        assert bytes((await client.request("GET", "/a")).body) == b"connection 1"
        assert bytes((await client.request("GET", "/b")).body) == b"connection 2"
        await client.aclose()


# --- serving and lifecycle --------------------------------------------------------------------


async def test_unix_sockets_on_both_sides(tmp_path: Path) -> None:
    """The gateway listens on a Unix socket and forwards to an upstream on one (the control plane)."""
    state = AppState()
    async with uvicorn_upstream(state, uds=str(tmp_path / "api.sock")) as upstream:
        gateway_path = str(tmp_path / "gw.sock")
        async with running_gateway(StaticRouter(upstream), path=gateway_path) as (_, address):
            client = await Client.connect(address)
            got = await client.request("GET", "/echo")
            assert got.status == 200 and "x-forwarded-for" not in got.json()["headers"]
            await client.aclose()


async def test_socket_upstream_opens_on_demand_and_pools_by_key(tmp_path: Path) -> None:
    """A SocketUpstream's connect() runs only when no pooled connection with its key is idle."""
    state = AppState()
    path = str(tmp_path / "instance.sock")
    opened: list[socket.socket] = []

    async def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, path)
        opened.append(sock)
        return sock

    async with uvicorn_upstream(state, uds=path):
        router = StaticRouter(SocketUpstream("ins_test", connect))
        async with running_gateway(router) as (_, address):
            client = await Client.connect(address)
            for _ in range(3):
                assert (await client.request("GET", "/echo")).status == 200
            await client.aclose()
    assert len(opened) == 1


async def test_access_log_gets_the_route_context(tmp_path: Path) -> None:
    """Every request yields one access record with status, sizes, timing and the route's context."""
    state = AppState()
    records: list[AccessRecord] = []
    async with uvicorn_upstream(state) as upstream:
        router = StaticRouter(upstream)
        router.answers[b"/teapot"] = Respond(418, body=b"short and stout")
        async with running_gateway(router, access_log=records.append) as (_, address):
            client = await Client.connect(address)
            await client.request("POST", "/echo", body=b"12345")
            await client.request("GET", "/teapot")
            await client.aclose()
    forwarded, answered = records
    assert (forwarded.head.method, forwarded.head.raw_path, forwarded.status) == (b"POST", b"/echo", 200)
    assert forwarded.bytes_in == 5 and forwarded.bytes_out > 0 and forwarded.duration_s > 0
    assert forwarded.context == {"session": "ses_test", "path": "/echo"}
    assert (answered.status, answered.bytes_out, answered.context) == (418, 15, None)


@pytest.mark.parametrize("path", ["/echo", "/chunked"])
async def test_the_client_has_its_whole_answer_before_the_bookkeeping(tmp_path: Path, path: str) -> None:
    """on_complete and the access hook run after the answer's last bytes were written: a client
    waiting for them does not wait for the accounting (sized and chunked answers)."""
    state = AppState()
    received_at_hook: list[bytes] = []
    sock = socket.socket()

    def peek(*_: object) -> None:
        received_at_hook.append(sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT))

    class PeekingRouter(NowaitRouter):
        def _done(self, status: int, bytes_in: int, bytes_out: int, duration_s: float) -> None:
            peek()

    async with (
        uvicorn_upstream(state) as upstream,
        running_gateway(PeekingRouter(upstream), access_log=peek) as (_, address),
    ):
        assert isinstance(address, tuple)
        loop = asyncio.get_running_loop()
        with sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            await loop.sock_sendall(sock, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
            answer = b""
            while not answer.endswith(b"}" if path == "/echo" else b"0\r\n\r\n"):
                answer += await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 10)
    assert answer.startswith(b"HTTP/1.1 200")
    assert received_at_hook == [answer, answer]  # route's on_complete, then the access hook


async def test_aclose_drains_requests_in_flight(tmp_path: Path) -> None:
    """Closing stops accepting but lets a request in flight finish, with `connection: close`."""
    state = AppState()
    async with uvicorn_upstream(state) as upstream:
        server = GatewayServer(StaticRouter(upstream))
        await server.start("127.0.0.1", 0)
        address = server.addresses[0]
        client = await Client.connect(address)
        client.send(b"GET /slow HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(server.aclose(drain_timeout_s=5))
        got = await client.reply()
        assert got.status == 200 and got.header(b"connection") == b"close"
        await asyncio.wait_for(closing, 5)
        assert server.connection_count == 0
        with pytest.raises(OSError):
            await Client.connect(address)
        await client.aclose()


# --- the same on uvloop -----------------------------------------------------------------------

UVLOOP_SCENARIOS: list[Callable[[Path], Coroutine[Any, Any, None]]] = [
    functools.partial(test_get_and_post_reach_the_upstream_and_come_back, router_kind=NowaitRouter),
    test_hop_by_hop_headers_stop_at_the_gateway,
    test_upstream_connection_is_reused_across_requests,
    test_head_request_then_keep_alive,
    test_chunked_request_and_chunked_response,
    test_response_trailers_do_not_leak_into_the_next_response,
    test_http10_client_and_connection_close,
    test_expect_100_continue,
    test_pipelined_requests_are_answered_in_order,
    test_many_concurrent_clients_each_get_their_own_answers,
    test_body_sent_while_routing_is_held_then_forwarded,
    test_slow_router_times_out_and_is_cancelled,
    test_sse_event_arrives_before_the_response_ends,
    test_websocket_echo_through_the_gateway,
    test_large_download_streams_with_bounded_memory,
    test_one_gib_upload_streams_with_bounded_memory,
    test_client_disconnect_closes_the_upstream_connection,
    test_timeout_gives_a_504_envelope_and_keeps_the_client,
    test_client_disconnect_before_the_response_head,
    test_refused_upload_still_gets_its_answer,
    test_malformed_request_gets_400_and_close,
    test_malformed_chunked_body_gets_400,
    test_oversized_head_gets_431,
    test_stale_pooled_connection_is_retried_once,
    test_unix_sockets_on_both_sides,
    test_socket_upstream_opens_on_demand_and_pools_by_key,
    test_aclose_drains_requests_in_flight,
]


def _scenario_name(scenario: object) -> str:
    func = scenario.func if isinstance(scenario, functools.partial) else scenario
    return getattr(func, "__name__", "scenario").removeprefix("test_")


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS, ids=_scenario_name)
def test_on_uvloop(scenario: Callable[[Path], Coroutine[Any, Any, None]], tmp_path: Path) -> None:
    """The production event loop: the same scenarios, run by uvloop."""
    uvloop.run(scenario(tmp_path))
