"""Connections to upstreams (instances, the control plane), kept alive and pooled per address.

An `UpstreamConnection` parses responses with httptools and hands every event to the one
`ResponseSink` (an exchange) that currently owns it; between requests it sits idle in the
`UpstreamPool`, which reuses the most recently released connection first and closes those idle
longer than `idle_timeout_s` (keep it below the upstream's own keep-alive timeout: uvicorn's is
5 s). A connection that is closed, broken, or left mid-message is never pooled, and one that
sends more than one answer to a request, or a head or trailers over MAX_FIELD_BYTES, is failed.

An upstream answers the same head, byte for byte, request after request (its `date` changes once
a second). A read that holds exactly one whole response, framed by Content-Length, whose head
was parsed before (see `KnownHead`), is handed to the sink without the parser: the same events
with the same values, at a fraction of the cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import socket
import sys
import termios
from typing import Protocol, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from agentcell.server.gateway.headers import (
    CONTENT_LENGTH,
    MEMO_BYTES,
    NAME_CACHE,
    TRANSFER_ENCODING,
    name_info,
    remember,
)
from agentcell.server.gateway.route import SocketUpstream, TcpUpstream, UnixUpstream, UpstreamAddress

log = logging.getLogger(__name__)

WRITE_HIGH_WATER = 1024 * 1024
WRITE_LOW_WATER = 256 * 1024
MAX_FIELD_BYTES = 256 * 1024  # a response head, or trailers, read before it is refused


class ResponseSink(Protocol):
    """The exchange that owns an upstream connection receives its events through this."""

    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_complete(self, keep_alive: bool) -> None:
        """The whole response was received; what was queued for the client is written at once."""

    def on_response_flush(self) -> None: ...
    def on_upstream_lost(self, error: str) -> None: ...
    def on_tunnel_data(self, data: bytes) -> None: ...
    def on_upstream_writable(self, writable: bool) -> None: ...
    def on_app_error(self, message: str) -> None: ...


class KnownHead:
    """What the parser made of a response head it parsed once: a head of exactly the same bytes,
    read at the start of a response, parses the same (the parser holds nothing from one response
    to the next), so its events are replayed instead. Only heads of a final response framed by
    one Content-Length are kept, with what the parser said of keep-alive when the response ended
    (it forgets it once the response is over)."""

    __slots__ = ("headers", "keep_alive", "length", "status")

    def __init__(
        self, status: int, headers: tuple[tuple[bytes, bytes], ...], length: int, keep_alive: bool
    ) -> None:
        self.status = status
        self.headers = headers
        self.length = length
        self.keep_alive = keep_alive


_KNOWN: dict[bytes, KnownHead] = {}


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    """The one Content-Length of a head with no Transfer-Encoding, or -1."""
    length = -1
    for name, value in headers:
        kind = (NAME_CACHE.get(name) or name_info(name))[1]
        if kind == TRANSFER_ENCODING or (kind == CONTENT_LENGTH and length >= 0):
            return -1
        if kind == CONTENT_LENGTH:
            if not value.isdigit():
                return -1
            length = int(value)
    return length


def pool_key(address: UpstreamAddress) -> tuple[object, ...]:
    """What makes two addresses equal for pooling (a SocketUpstream's key alone): the idle
    connections of one are the other's. (A tuple, not the address: an address's dataclass hash
    runs as Python code, twice per request.)"""
    if isinstance(address, SocketUpstream):
        return (SocketUpstream, address.key)
    if isinstance(address, TcpUpstream):
        return (TcpUpstream, address.host, address.port)
    return (UnixUpstream, address.path)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to an upstream."""

    def __init__(self, pool: UpstreamPool, address: UpstreamAddress, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.address = address
        self.pool_key = pool_key(address)
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.requests = 0  # requests started on this connection (> 1: it was reused)
        self.idle_since = 0.0
        self.expect_no_body = False  # the current request is HEAD
        self.is_closed = False
        self.write_paused = False  # its transport's buffer is over the high-water mark
        self._parser = HttpResponseParser(self)
        self._parser_spent = False  # a HEAD response left the parser waiting for a body
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._tunnel = False
        self._read_paused = False
        self._answered = False  # a final response ended in the bytes being parsed
        self._unreported = 0  # bytes parsed since the last head, body bytes or end of a response
        # A Content-Length body is passed through without the parser once its head is parsed:
        # the sink sets body_length; _body_left counts down what is still to come.
        self.body_length = -1
        self._body_seen = 0
        self._body_left = 0
        self._in_message = False  # the parser has begun a response it has not ended
        self._heads = 0  # response heads parsed in the current read
        self._head: tuple[int, list[tuple[bytes, bytes]]] | None = None  # the last one parsed
        self._keep_alive = False  # what the parser said of the last response it ended

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # an idle connection must stay silent
            self.close()
            return
        if self._body_left:
            self._pass_body(sink, data)
            return
        if self._tunnel:
            sink.on_tunnel_data(data)
            return
        self._answered = False
        fresh = not self._in_message and not self._parser_spent and not self.expect_no_body
        if fresh and self._replay_known(sink, data):
            return
        # Bytes read since the parser last reported anything (a head, body bytes, an end): a
        # head or trailers, whose names and values it holds until each ends, at a cost that
        # grows with their square. An instance must not be able to stall the gateway that way.
        self._unreported += len(data)
        if self._unreported > MAX_FIELD_BYTES:
            self._fail(f"the upstream sent a response head or trailers over {MAX_FIELD_BYTES} bytes")
            return
        self._heads = 0
        try:
            self._parser.feed_data(data)
            if self.body_length > 0 and self.sink is sink:  # mid-body: skip the parser from now on
                self._body_left = self.body_length - self._body_seen
                self._parser_spent = True
            elif fresh and self._answered and self._heads == 1 and not self.is_closed:
                self._remember_head(data)
        except HttpParserUpgrade as exc:
            self._tunnel = True
            rest = data[exc.args[0] :]
            if rest and self.sink is not None:
                self.sink.on_tunnel_data(rest)
        except HttpParserError as exc:
            self._fail(f"the upstream sent a malformed response ({exc})")
        finally:
            # The sink may have released this connection meanwhile; flush what it queued anyway.
            sink.on_response_flush()

    def _replay_known(self, sink: ResponseSink, data: bytes) -> bool:
        """Hand `data` to the sink as the parser would have, if it is one whole response whose
        head is known; False (nothing done) otherwise."""
        end = data.find(b"\r\n\r\n") + 4
        known = _KNOWN.get(data[:end]) if 4 <= end <= MEMO_BYTES else None
        if known is None or len(data) - end != known.length:
            return False
        self._status = known.status
        self._body_seen = self._unreported = 0
        sink.on_response_head(known.status, list(known.headers))
        self.body_length = -1
        if self.sink is sink:
            if known.length:
                sink.on_response_body(data[end:])
            self._answered = True
            sink.on_response_complete(known.keep_alive)
        sink.on_response_flush()
        return True

    def _remember_head(self, data: bytes) -> None:
        """The read held one response, whole, and nothing else: keep its head if the rest of the
        read is its body, as its one Content-Length says (a chunked body, a body that ends with
        the connection or none at all, and a HEAD's answer, are always parsed)."""
        head = self._head
        end = data.find(b"\r\n\r\n") + 4
        if head is None or len(data) - end != _content_length(head[1]):
            return
        known = KnownHead(head[0], tuple(head[1]), len(data) - end, self._keep_alive)
        remember(_KNOWN, data[:end], known, end)

    def _pass_body(self, sink: ResponseSink, data: bytes) -> None:
        left = self._body_left
        if len(data) < left:
            self._body_left = left - len(data)
            sink.on_response_body(data)
            sink.on_response_flush()
            return
        self._body_left = 0
        self.body_length = -1
        keep_alive = len(data) == left and self._parser.should_keep_alive()  # no bytes may follow
        sink.on_response_body(data if len(data) == left else data[:left])
        sink.on_response_complete(keep_alive)  # (which flushes)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_upstream_lost("the upstream closed the connection" + (f" ({exc})" if exc else ""))
        else:
            self.pool.discard(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.sink is not None:
            self.sink.on_upstream_writable(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.sink is not None:
            self.sink.on_upstream_writable(True)

    # --- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        if self._answered:
            # A response begins in the bytes that ended this request's answer (an upstream that
            # sent two answers, or a body its status forbids). The connection may already serve
            # the next request, maybe another session's (it started when the answer ended): fail
            # that one (a safe request is retried on a new connection) rather than answer it so.
            self._fail("the upstream sent more than one answer to a request")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._unreported = 0
        status = self._status = self._parser.get_status_code()
        headers, self._headers = self._headers, []
        self._body_seen = 0
        self._heads += 1
        self._head = (status, headers)  # (sinks read headers, never change them)
        if self.sink is None:
            return
        self.sink.on_response_head(status, headers)
        if self.expect_no_body and status >= 200 and self.sink is not None:
            # httptools has no HEAD mode: it would wait for Content-Length bytes that never come.
            self._parser_spent = self._answered = True
            self.sink.on_response_complete(self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        self._unreported = 0
        self._body_seen += len(body)
        if self.sink is not None:
            self.sink.on_response_body(body)

    def on_message_complete(self) -> None:
        self._unreported = 0
        self._in_message = False
        if self._status < 200 or self._parser_spent:
            return  # interim responses and 101 do not end the exchange
        self._answered = True
        self._headers = []  # trailers of a chunked response (not passed on)
        self.body_length = -1
        self._keep_alive = keep_alive = self._parser.should_keep_alive()
        sink = self.sink  # it releases this connection to the pool or closes it
        if sink is not None:
            sink.on_response_complete(keep_alive)

    # --- used by the owning exchange --------------------------------------------------------

    def bind(self, sink: ResponseSink, *, is_head: bool) -> None:
        """Hand the connection to `sink` for one request."""
        self.sink = sink
        self.requests += 1
        self.expect_no_body = is_head
        if self._parser_spent:
            self._parser = HttpResponseParser(self)
            self._parser_spent = self._in_message = False

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, data: list[bytes]) -> None:
        assert self.transport is not None
        self.transport.writelines(data)

    def unsent_bytes(self) -> int:
        """Bytes written to this connection that the upstream has not taken yet (send timeout)."""
        return queued_bytes(self.transport) if self.transport is not None else 0

    def set_reading(self, reading: bool) -> None:
        """Backpressure from the client side: stop reading while the client is not draining."""
        if self.transport is None or reading != self._read_paused or self.is_closed:
            return
        self._read_paused = not reading
        if reading:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def release(self) -> None:
        """The exchange is done with a connection that may serve another request."""
        self.sink = None
        if self._read_paused:
            self.set_reading(True)
        self.pool.release(self)

    def close(self) -> None:
        """Close without returning to the pool (broken, cancelled or mid-message). Bytes still
        unsent are dropped: a transport closes only once they are written, which an upstream
        that stopped reading (see the send timeout) would put off forever."""
        self.sink = None
        self.is_closed = True
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    def _fail(self, message: str) -> None:
        sink = self.sink
        self.close()
        if sink is not None:
            sink.on_upstream_lost(message)


def queued_bytes(transport: asyncio.Transport) -> int:
    """Bytes written to `transport` that its peer has not taken: those in its buffer, and those
    in the socket's send queue (unacknowledged over TCP, unread over a Unix socket), so that a
    peer that reads a little at a time is seen to (the buffer alone only moves when the kernel
    frees a third of its send buffer: megabytes)."""
    unsent = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # (closed meanwhile: the buffer alone)
            unsent += int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)), sys.byteorder)
    return unsent


class UpstreamPool:
    """Idle keep-alive connections per upstream address; opens new ones on demand."""

    def __init__(self, *, idle_timeout_s: float = 4.0, max_idle_per_address: int = 64) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_idle_per_address = max_idle_per_address
        self._idle: dict[tuple[object, ...], list[UpstreamConnection]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    def take_idle(self, address: UpstreamAddress) -> UpstreamConnection | None:
        """The most recently released live connection to `address`, if any."""
        idle = self._idle.get(pool_key(address))
        while idle:
            conn = idle.pop()
            if not conn.is_closed:
                return conn
        return None

    async def connect(self, address: UpstreamAddress) -> UpstreamConnection:
        """Open a new connection to `address` (the caller bounds the time it may take)."""
        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(self, address, loop)
        if isinstance(address, TcpUpstream):
            await loop.create_connection(lambda: conn, address.host, address.port)
        elif isinstance(address, UnixUpstream):
            await loop.create_unix_connection(lambda: conn, address.path)
        else:
            sock = await address.connect()
            try:
                sock.setblocking(False)
                if sock.family == socket.AF_UNIX:
                    await loop.create_unix_connection(lambda: conn, sock=sock)
                else:
                    await loop.create_connection(lambda: conn, sock=sock)
            except BaseException:
                sock.close()
                raise
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.pool_key, [])
        if self._closed or conn.is_closed or len(idle) >= self.max_idle_per_address:
            conn.close()
            return
        loop = conn.loop
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweep is None:
            self._sweep = loop.call_later(self.idle_timeout_s / 2, self._sweep_once)

    def discard(self, conn: UpstreamConnection) -> None:
        """An idle connection closed by its upstream."""
        idle = self._idle.get(conn.pool_key)
        if idle and conn in idle:
            idle.remove(conn)

    def idle_count(self, address: UpstreamAddress | None = None) -> int:
        if address is not None:
            return len(self._idle.get(pool_key(address), ()))
        return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        """Close every idle connection; connections in use close when their exchange ends."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    def _sweep_once(self) -> None:
        self._sweep = None
        loop = asyncio.get_running_loop()  # (a timer callback: once per idle_timeout_s / 2)
        expired_before = loop.time() - self.idle_timeout_s
        oldest = math.inf
        for key, idle in list(self._idle.items()):
            keep = [c for c in idle if c.idle_since > expired_before and not c.is_closed]
            for conn in idle:
                if conn not in keep:
                    conn.close()
            if keep:
                self._idle[key] = keep
                oldest = min(oldest, keep[0].idle_since)
            else:
                del self._idle[key]
        if oldest != math.inf:
            self._sweep = loop.call_later(self.idle_timeout_s / 2, self._sweep_once)
