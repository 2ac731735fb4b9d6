"""One client connection: parse requests, keep them in order, hand each to an `Exchange`.

Requests are parsed with httptools as bytes arrive. Pipelined requests queue behind the one in
flight (reading pauses while more than one is queued; past MAX_PIPELINED the connection closes
after answering those) and are answered strictly in order. A head whose framing or target could
be read two ways (no or two Host headers, a coding other than chunked, an upgrade with a body)
is refused, so that an upstream only ever gets one unambiguous request. Reading
also pauses while a request body cannot move on (routing, or the upstream not draining); the
upstream stops being read while this client is not draining its responses. After an `Upgrade`
request the parser stops; once the upstream answers 101 the connection becomes a byte tunnel.

One timer per connection, re-armed lazily, covers the request deadline (no response head in time),
the keep-alive idle timeout, the request-head timeout and the body-read timeout, so a busy
keep-alive connection creates no timer per request. A head's clock starts only when a read leaves
it incomplete (a head that arrives in one read costs no clock reading), or when the connection goes
idle with part of the next head already read; past the server's `header_timeout_s` it is answered
408 and closed. Likewise a body's clock restarts at each read that leaves it incomplete, and when
reading resumes after a pause: it runs only while the gateway is waiting for the client, never
while reading is paused (a body that cannot move on, a request queued behind another), and not
before a 100 Continue that an `Expect` asks for was relayed. A body silent past the server's
`body_timeout_s` ends its request (408 if no response began) and the connection (nginx's
client_body_timeout).
The same timer covers the send timeout (nginx's send_timeout and proxy_send_timeout): when the
client's write buffer fills (pause_writing), or the upstream's does while it is sent a body or
tunnel bytes, a `WriteStall` clock starts, checked every quarter of the server's `send_timeout_s`
until that side drains; a check that finds fewer bytes unsent than the last one restarts it. A
client that took nothing for the whole timeout is dropped (its requests end as if it had gone),
and so is one that never reads what was left to send when its connection closes; an upstream
that took nothing gets its request 504 (or cut off, if its response began). Nothing of this runs
on a connection whose writes never pause.
A read that is exactly one whole request whose head is byte for byte one parsed before (see
`KnownRequest`) is not parsed again: the request is made from what the parser made of the head.
A connection past the server's connection caps is answered 503 and closed before it is read.
A client's FIN or reset cancels its requests in flight (their upstream connections are closed).
After answering a request whose body was not read to the end, the connection lingers (FIN sent,
input dropped) briefly before closing, so that the answer is not destroyed by a reset.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, cast

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from agentcell.server.gateway.exchange import NEW, Exchange
from agentcell.server.gateway.headers import (
    MEMO_BYTES,
    NAME_CACHE,
    PLAIN,
    header_index,
    name_info,
    remember,
    respond_bytes,
)
from agentcell.server.gateway.route import RequestHead, Route, new_request_id
from agentcell.server.gateway.upstream import queued_bytes

if TYPE_CHECKING:
    from agentcell.server.gateway.server import GatewayServer

log = logging.getLogger(__name__)

WRITE_HIGH_WATER = 1024 * 1024
WRITE_LOW_WATER = 256 * 1024
LINGER_S = 2.0
LINGER_BYTES = 8 * 1024 * 1024
MAX_PIPELINED = 64  # requests queued on one connection; past that, it closes after answering them

_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0"}
_ONE_HOST = "an HTTP/1.1 request needs exactly one Host header"


class _HeadTooLarge(Exception):
    pass


class _PipelineFull(Exception):
    pass


class _BadHead(Exception):
    """A request head the gateway refuses, raised in a parser callback (so parsing stops)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class KnownRequest:
    """A request head as the parser made it of a read that held that request whole (its body, if
    any, framed by Content-Length) and nothing else.

    The parser holds nothing from one request to the next, so a read of the same head at the
    start of a request, followed by exactly `length` body bytes, parses the same: the request is
    made from this instead (with the connection's own client address, a request id of its own,
    and its own body)."""

    __slots__ = ("head", "keep_alive", "length")

    def __init__(self, head: RequestHead, keep_alive: bool, length: int) -> None:
        self.head = head  # the first one's (its request id and client are not reused)
        self.keep_alive = keep_alive  # what the parser said (the server may be draining since)
        self.length = length  # of the body


_KNOWN: dict[bytes, KnownRequest] = {}


class WriteStall:
    """How long a peer has taken none of the bytes queued for it: the clock of the send timeout.

    Started when a write side pauses. Each check compares the bytes still unsent with the last
    check's: any fewer means the peer read something, and the clock restarts. So only a peer that
    took nothing between two checks a whole timeout apart is late (nginx measures between two
    writes; a write here is the transport's, so checks are what see them)."""

    __slots__ = ("since", "unsent")

    def __init__(self, now: float, unsent: int) -> None:
        self.since = now
        self.unsent = unsent

    def is_late(self, now: float, unsent: int, timeout_s: float) -> bool:
        if unsent < self.unsent:
            self.since = now
        self.unsent = unsent
        return now - self.since >= timeout_s


class ClientConnection(asyncio.Protocol):
    """The server side of one client connection (see the module docstring)."""

    # Reasons to stop reading from the client; reading resumes when none is left.
    PIPELINE = 1  # more than one request is queued
    BODY = 2  # a request body (or tunnel bytes) cannot move on yet
    STOPPED = 4  # malformed input or closing: never read again

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.write_paused = False
        self._parser = HttpRequestParser(self)
        self._exchanges: deque[Exchange] = deque()
        self._parsing: Exchange | None = None  # the exchange whose body the parser is reading
        self._tunnel: Exchange | None = None
        # the last Forward's `reuse`: how its next request may be routed without the router
        self.pin: Callable[[RequestHead], Route | None] | None = None
        self._upgraded = False  # the parser stopped at an upgrade request
        self._read_blocked = 0
        self.out: list[bytes] = []
        self.flush_due = False  # in the server's list of connections to write out this turn
        self._closed = False
        self._idle_since = self.loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self.timer_at = math.inf
        # the request head being parsed
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._max_head = server.max_header_bytes
        self._keepalive_s = server.keepalive_timeout_s
        self._head_timeout_s = server.header_timeout_s
        self._head_since = 0.0  # when the head being read began (0: none is left unfinished)
        self._body_timeout_s = server.body_timeout_s
        self._body_since = 0.0  # the last read of the body being read (0: its clock has not started)
        self._send_timeout_s = server.send_timeout_s
        self._client_stall: WriteStall | None = None  # the client is not taking what is sent to it
        self._upstream_stall: WriteStall | None = None  # nor the active exchange's upstream
        self._in_head = False
        self._head_raw = 0  # bytes of reads wholly inside a head or a body's framing (see below)
        self._linger_left = -1  # >= 0: closing after a response to an unfinished request
        self._in_message = False  # the parser has begun a request it has not ended
        self._heads = 0  # request heads parsed in the current read
        self._keep_alive = False  # what the parser said of the last head (before it forgets it)

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH_WATER, WRITE_LOW_WATER)
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) and peer else ""
        refused = self.server.admit(self)
        if refused is not None:
            self._refuse_connection(refused)
            return
        self.arm_timer(self._idle_since + self.server.keepalive_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.on_tunnel_client_data(data)
            return
        if self._linger_left >= 0:
            self._linger_left -= len(data)
            if self._linger_left < 0 and self.transport is not None:
                self.transport.close()
            return
        if self._upgraded:
            if self._exchanges:
                self._exchanges[-1].on_tunnel_client_data(data)
            return
        if self._read_blocked & self.STOPPED:
            return
        fresh = not self._in_message
        if fresh and self._replay_known(data):
            return
        self._heads = 0
        was_in_head = self._in_head
        parsing = self._parsing  # a request whose body is being read
        body_seen = parsing.bytes_in if parsing is not None else 0
        try:
            self._parser.feed_data(data)
            if was_in_head and self._in_head:
                self._head_raw += len(data)
                if self._head_raw > self._max_head:
                    raise HttpParserError("request head too large") from _HeadTooLarge()
                if not self._head_since:  # (the last head ended in this read; the next began)
                    self._begin_head()
            elif parsing is not None and parsing is self._parsing:
                self._count_framing(parsing.bytes_in == body_seen, len(data))
                self._body_waited(parsing)
            elif self._parsing is not None:  # a head ended in this read, its body did not
                self._body_waited(self._parsing)
            elif self._in_head or not self._exchanges:  # a head (or its method) is unfinished
                self._begin_head()
            elif fresh and self._heads == 1 and not self._in_message:
                self._remember_request(data)
        except HttpParserUpgrade as exc:
            self._upgraded = True
            rest = data[exc.args[0] :]
            if rest and self._exchanges:
                self._exchanges[-1].on_tunnel_client_data(rest)
        except HttpParserError as exc:
            self._on_parse_error(exc)
        exchanges = self._exchanges
        if exchanges and exchanges[0].state == NEW:
            exchanges[0].start()

    def _replay_known(self, data: bytes) -> bool:
        """Make the request of a read that is a known head and its body (see `KnownRequest`), as
        the parser's callbacks would have; False (nothing done) if it is not one."""
        end = data.find(b"\r\n\r\n") + 4
        known = _KNOWN.get(data[:end]) if 4 <= end <= MEMO_BYTES else None
        if known is None or len(data) - end != known.length or len(self._exchanges) >= MAX_PIPELINED:
            return False
        was = known.head
        head = RequestHead(
            was.method, was.raw_path, was.query, was.headers, was.index, self.client, was.http_version
        )
        exchange = Exchange(self, head, keep_alive=known.keep_alive and not self.server.draining)
        if known.length:
            exchange.on_request_body(data[end:])
        exchange.request_complete = True
        self._head_raw = 0
        self._body_since = 0.0
        exchanges = self._exchanges
        exchanges.append(exchange)
        if len(exchanges) > 1:
            self.set_read_blocked(self.PIPELINE, True)
        if exchanges[0].state == NEW:
            exchanges[0].start()
        return True

    def _remember_request(self, data: bytes) -> None:
        """The read held one request, whole, and nothing of another: keep its head if the rest
        of the read is its body, as its Content-Length says (a chunked body is always parsed;
        an upgrade or CONNECT stops the parser with an exception, so it never gets here)."""
        end = data.find(b"\r\n\r\n") + 4
        head = self._exchanges[-1].head
        index = head.index
        declared = index.get(b"content-length", b"0")
        if b"transfer-encoding" in index or not declared.isdigit() or int(declared) != len(data) - end:
            return
        remember(_KNOWN, data[:end], KnownRequest(head, self._keep_alive, len(data) - end), end)

    def _begin_head(self) -> None:
        """A read left a request head unfinished: start its clock, unless already started."""
        if not self._head_since and not self._closed:
            self._head_since = now = self.loop.time()
            if not self._exchanges:
                self.arm_timer(now + self._head_timeout_s)

    def _body_waited(self, parsing: Exchange) -> None:
        """A read left a request body unfinished, or reading it resumed: its clock restarts.

        Not while a client that sent `Expect` waits for its 100 Continue (the body clock starts
        when one is relayed, or with the first body byte): until then the client is not late."""
        if not self._body_since and not parsing.bytes_in and b"expect" in parsing.head.index:
            return
        self._body_since = now = self.loop.time()
        self.arm_timer(now + self._body_timeout_s)

    def _count_framing(self, no_body: bool, size: int) -> None:
        """Bound the reads that carried none of a body still being read: they fell wholly in a
        chunked body's framing (chunk headers, trailers), whose trailer names and values the
        parser holds until each ends, at a cost that grows with their square."""
        if not no_body:
            self._head_raw = 0  # (unused between heads: it counts these reads meanwhile)
            return
        self._head_raw += size
        if self._head_raw > self._max_head:
            message = f"chunk headers or trailers exceed {self._max_head} bytes"
            raise HttpParserError(message) from _HeadTooLarge()

    def eof_received(self) -> bool:
        # Like nginx, a client's FIN counts as going away: requests in flight are cancelled
        # (a half-closing client that still wants its answer is rare; a vanished one is not).
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.out.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        exchanges, self._exchanges = self._exchanges, deque()
        for exchange in exchanges:
            exchange.on_client_lost()
        self._tunnel = None
        self.server.forget(self)

    @functools.cached_property
    def sockname(self) -> tuple[str, int | None] | None:
        """The address the client reached, as an ASGI scope's `server` (looked up once)."""
        name = self.transport.get_extra_info("sockname") if self.transport is not None else None
        if isinstance(name, tuple) and len(name) >= 2:
            return (str(name[0]), int(name[1]))
        return (name, None) if isinstance(name, str) and name else None

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self._client_stall = WriteStall(now := self.loop.time(), queued_bytes(self.transport))
            self._arm_stall_check(now)
        active = self._active()
        if active is not None:
            active.on_client_writable(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        if not self._closed:  # (closing, the rest must still leave in time: see _watch_unsent)
            self._client_stall = None
        active = self._active()
        if active is not None:
            active.on_client_writable(True)

    def _active(self) -> Exchange | None:
        """The exchange whose bytes are moving: the tunnel, or the first request in the queue."""
        return self._tunnel or (self._exchanges[0] if self._exchanges else None)

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True

    def on_url(self, url: bytes) -> None:
        self._in_head = True
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._max_head:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_head:
            raise _HeadTooLarge
        parsing = self._parsing
        if parsing is None:
            self._headers.append((name, value))
        elif (NAME_CACHE.get(name) or name_info(name))[1] == PLAIN:  # a trailer of a chunked body
            parsing.on_request_trailer(name, value)

    def on_headers_complete(self) -> None:
        if len(self._exchanges) >= MAX_PIPELINED:
            raise _PipelineFull  # (parsing stops: one read can hold thousands of small requests)
        parser = self._parser
        version = _VERSIONS.get(parser.get_http_version()) or _version(parser.get_http_version())
        headers = tuple(self._headers)
        index = header_index(headers)
        host = index.get(b"host")
        # Repeated Host headers are joined with ", ", which no host name contains. (`0x2C in`
        # is a memchr, 10x cheaper than `b"," in`; so is `path[0] != 0x2F` than a slice.)
        if (0x2C in host) if host is not None else version == b"1.1":
            raise _BadHead(400, _ONE_HOST)
        path, _, query = self._url.partition(b"?")
        method = parser.get_method()
        if (not path or path[0] != 0x2F) and path != b"*" and method != b"CONNECT":  # (CONNECT: 405)
            path, headers = _origin_form(path, headers)
            index = header_index(headers)
        head = RequestHead(method, path, query, headers, index, self.client, version)
        self._heads += 1
        self._url = b""  # ready for the next head
        self._headers = []
        self._head_bytes = self._head_raw = 0
        self._head_since = self._body_since = 0.0
        self._in_head = False
        upgrade = index.get(b"upgrade") if b"upgrade" in index and parser.should_upgrade() else None
        chunked = b"transfer-encoding" in index and _is_chunked(index[b"transfer-encoding"])
        if upgrade is not None and (chunked or index.get(b"content-length", b"0") != b"0"):
            # The parser hands what follows an upgrade head to the tunnel, never as its body: the
            # upstream would wait for a body that does not come, and read the next request as it.
            raise _BadHead(400, "an Upgrade request cannot have a body; send it without one")
        self._keep_alive = parser.should_keep_alive()
        exchange = Exchange(
            self,
            head,
            # (RFC 9112 §6.1: a chunked HTTP/1.0 request is framed by a guess; never reuse it)
            keep_alive=self._keep_alive and not self.server.draining and not (chunked and version == b"1.0"),
            chunked=chunked,
            upgrade=upgrade,
        )
        self._parsing = exchange
        self._exchanges.append(exchange)
        if len(self._exchanges) > 1:
            self.set_read_blocked(self.PIPELINE, True)

    def on_body(self, body: bytes) -> None:
        if self._parsing is not None:
            self._parsing.on_request_body(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        parsing, self._parsing = self._parsing, None
        if parsing is not None:
            parsing.on_request_complete()

    def _on_parse_error(self, exc: HttpParserError) -> None:
        self.set_read_blocked(self.STOPPED, True)
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, _PipelineFull):
            # Answer the requests queued, then close: a pipelining client sends the unanswered
            # rest again on a new connection (RFC 9112 §9.3.2), as after nginx's keepalive_requests.
            self._exchanges[-1].keep_alive = False
            return
        too_large = isinstance(cause, _HeadTooLarge)
        broken = self._parsing
        if broken is not None and not broken.request_complete:
            # A malformed body: this request cannot complete; answer 400 if nothing was sent yet.
            message = f"malformed request body: {exc}"
            broken.keep_alive = False
            if broken is not self._exchanges[0]:
                self.close()  # behind another request in flight: no way to answer in order
            elif broken.state == NEW:
                broken.preset = self.server.error_responder(
                    400, "invalid_argument", message, broken.head.request_id
                )
            else:
                broken.fail_request(400, "invalid_argument", message)
            return
        status, message = (
            (431, f"request head exceeds {self.server.max_header_bytes} bytes; send fewer or smaller headers")
            if too_large
            else (cause.status, str(cause))
            if isinstance(cause, _BadHead)
            else (400, f"malformed HTTP request: {exc}")
        )
        self._answer_unread(status, "invalid_argument", message)

    def _answer_unread(self, status: int, code: str, message: str) -> None:
        """Queue an error answering the request head being read, after which the connection closes."""
        headers = tuple(self._headers)
        head = RequestHead(b"", self._url, b"", headers, header_index(headers), self.client)
        error = self.server.error_responder(status, code, message, head.request_id)
        self._exchanges.append(Exchange(self, head, keep_alive=False, preset=error))

    # --- used by exchanges --------------------------------------------------------------------

    def queue(self, data: bytes) -> None:
        """Buffer bytes for the client (as does appending to `out`); `flush()` has them written,
        so a small response leaves in one write."""
        self.out.append(data)

    def flush_soon(self) -> None:
        """Have what is queued written at the end of this turn of the event loop, with the other
        connections' (`GatewayServer.flush_soon`): for the end of an answer, whose size one
        upstream read bounds."""
        if self.out and not self.flush_due:
            self.flush_due = self.server.flush_soon(self)

    def flush(self) -> None:
        self.flush_due = False
        out = self.out
        if not out:
            return
        self.out = []
        if self._closed or self.transport is None:
            return
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            # One write of a joined buffer beats writev for the small responses that dominate;
            # large bodies go as they are, without a copy.
            if sum(map(len, out)) <= 65536:
                self.transport.write(b"".join(out))
            else:
                self.transport.writelines(out)

    def write(self, data: bytes) -> None:
        if self.out:
            self.out.append(data)
            self.flush()
        elif not self._closed and self.transport is not None:
            self.transport.write(data)

    def on_upstream_writable(self, writable: bool) -> None:
        """The active exchange's upstream stopped (or resumed) taking the bytes sent to it: the
        client is not read meanwhile, and the upstream's send-timeout clock runs."""
        self.set_read_blocked(self.BODY, not writable)
        if writable:
            self._upstream_stall = None
            return
        active = self._active()
        if active is not None and active.upstream is not None and not self._closed:
            self._upstream_stall = WriteStall(now := self.loop.time(), active.upstream.unsent_bytes())
            self._arm_stall_check(now)

    def set_read_blocked(self, reason: int, blocked: bool) -> None:
        before = self._read_blocked
        after = before | reason if blocked else before & ~reason
        self._read_blocked = after
        if self.transport is None or self._closed or (before == 0) == (after == 0):
            return
        if after:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()
            if self._parsing is not None:  # the time paused was the gateway's, not the client's
                self._body_waited(self._parsing)

    def enter_tunnel(self, exchange: Exchange) -> None:
        """The upstream accepted an upgrade: from now on bytes pass through unparsed."""
        self._tunnel = exchange
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.timer_at = math.inf
        if self._client_stall is not None or self._upstream_stall is not None:
            self._arm_stall_check(self.loop.time())

    def on_interim_response(self, exchange: Exchange) -> None:
        """A 1xx (such as 100 Continue) reached the client: a body still to come is now due."""
        if exchange is self._parsing and not self._closed:
            self._body_since = now = self.loop.time()
            self.arm_timer(now + self._body_timeout_s)

    def on_exchange_done(self, exchange: Exchange) -> None:
        """The first queued exchange wrote its whole response: close, or start the next one."""
        self._upstream_stall = None
        exchanges = self._exchanges
        if exchanges and exchanges[0] is exchange:
            exchanges.popleft()
        if self._tunnel is exchange or not exchange.keep_alive or self.server.draining:
            # Input may be left unread (a body, requests behind this one, or reading stopped):
            # linger, so that closing does not reset the connection before the answers are read.
            unread = not exchange.request_complete or exchanges or self._read_blocked & self.STOPPED
            if self._tunnel is exchange or not unread:
                self.close()
            else:
                self._close_lingering()
            return
        if self._read_blocked & self.BODY:  # left by an upstream that was still draining a body
            self.set_read_blocked(self.BODY, False)
        if len(exchanges) <= 1 and self._read_blocked & self.PIPELINE:
            self.set_read_blocked(self.PIPELINE, False)
        if exchanges:
            if exchanges[0].state == NEW:
                exchanges[0].start()
        else:
            self._idle_since = now = self.loop.time()
            if self._head_since:  # the next head began behind this request: its time starts now
                self._head_since = now
                self.arm_timer(now + self._head_timeout_s)
            elif now + self._keepalive_s < self.timer_at:
                self.arm_timer(now + self._keepalive_s)

    def close(self) -> None:
        """Flush what is queued and close; exchanges still queued end as client-gone."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._read_blocked |= self.STOPPED
        if self.transport is not None:
            self._watch_unsent()
            self.transport.close()

    def _close_lingering(self) -> None:
        """Close after answering a request whose body was not read to its end.

        Closing a socket with unread input makes the kernel send a reset, which can destroy the
        response before the client reads it. So: send FIN after the response, then read and
        drop what the client still sends, for up to LINGER_S or LINGER_BYTES (as nginx does).
        """
        transport = self.transport
        if self._closed or transport is None or not transport.can_write_eof():
            self.close()
            return
        self.flush()
        self._closed = True
        self._linger_left = LINGER_BYTES
        transport.write_eof()
        if self._read_blocked:
            self._read_blocked = 0
            transport.resume_reading()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(LINGER_S, self._end_linger)
        self.timer_at = -math.inf  # nothing else may re-arm it

    def _end_linger(self) -> None:
        self._timer = None
        self.timer_at = math.inf
        if self.transport is not None:
            self._watch_unsent()
            self.transport.close()

    def _watch_unsent(self) -> None:
        """Closing with bytes still unsent: the transport closes once they are written, so a
        client that never reads them would hold the connection forever; time it like a pause."""
        transport = self.transport
        assert transport is not None
        if transport.get_write_buffer_size():  # (what the socket holds is the kernel's to send)
            now = self.loop.time()
            if self._client_stall is None:  # (else it has been paused since then)
                self._client_stall = WriteStall(now, queued_bytes(transport))
            self._arm_stall_check(now)

    def abort(self) -> None:
        """Drop the connection now (shutdown deadline passed): exchanges end as client-gone."""
        if self.transport is not None:
            self.transport.abort()

    def close_if_idle(self) -> None:
        """Graceful shutdown: close now if no request is in flight."""
        if not self._exchanges and self._tunnel is None:
            self.close()

    # --- the connection's single timer --------------------------------------------------------

    def arm_timer(self, when: float) -> None:
        """Make sure the timer fires no later than `when` (cheap when it already does)."""
        if when >= self.timer_at or self._closed:
            return
        self._set_timer(when)

    def _arm_stall_check(self, now: float) -> None:
        """Check a stalled write side a quarter timeout from now (on a closing connection too:
        its unsent bytes must leave in time, see _watch_unsent)."""
        when = now + self._send_timeout_s / 4
        if when < self.timer_at:
            self._set_timer(when)

    def _set_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)
        self.timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        self.timer_at = math.inf
        now = self.loop.time()
        if (self._client_stall is not None or self._upstream_stall is not None) and self._check_stalls(now):
            return
        if self._closed or self._tunnel is not None:
            return
        if not self._exchanges:
            if self._head_since:
                self._check_head(now)
                return
            idle_until = self._idle_since + self.server.keepalive_timeout_s
            if now >= idle_until:
                self.close()
            else:
                self.arm_timer(idle_until)
            return
        exchange = self._exchanges[0]
        if self._body_since and exchange is self._parsing and not self._read_blocked:
            body_until = self._body_since + self._body_timeout_s
            if now >= body_until:
                exchange.on_body_timeout(self._body_timeout_s)
                return
            self.arm_timer(body_until)
        exchange.on_timer(now)
        if self._exchanges and self._exchanges[0] is exchange and exchange.deadline != math.inf:
            self.arm_timer(exchange.deadline)

    def _check_stalls(self, now: float) -> bool:
        """The timer fired while a write side was stalled: end what waited past the send timeout
        (True: the connection or its exchange ended), or check again later."""
        timeout_s = self._send_timeout_s
        stall = self._client_stall
        if stall is not None and self.transport is not None:
            unsent = queued_bytes(self.transport)
            if not unsent:
                self._client_stall = None
            elif stall.is_late(now, unsent, timeout_s):
                log.info(
                    "%s took nothing sent to it for %g s: dropping its connection", self.client, timeout_s
                )
                self._client_stall = None
                self.abort()  # (its exchanges end in connection_lost, as for a client gone)
                return True
            else:
                self._arm_stall_check(now)
        stall = self._upstream_stall
        if stall is not None:
            active = self._active()
            upstream = active.upstream if active is not None else None
            if active is None or upstream is None or not upstream.write_paused or self._closed:
                self._upstream_stall = None
            elif stall.is_late(now, upstream.unsent_bytes(), timeout_s):
                self._upstream_stall = None
                active.on_upstream_send_timeout(timeout_s)
                return True
            else:
                self._arm_stall_check(now)
        return False

    def _check_head(self, now: float) -> None:
        """The timer fired while a request head is unfinished: 408 past its time, else wait."""
        head_until = self._head_since + self._head_timeout_s
        if now < head_until:
            self.arm_timer(head_until)
            return
        self.set_read_blocked(self.STOPPED, True)
        message = f"the request head was not complete within {self._head_timeout_s:g} s; send it at once"
        self._answer_unread(408, "timeout", message)
        self._exchanges[0].start()

    def _refuse_connection(self, reason: str) -> None:
        """Answer a connection past a cap with 503 and close it, unread."""
        respond = self.server.error_responder(503, "unavailable", f"{reason}; retry later", new_request_id())
        respond = replace(respond, headers=(*respond.headers, (b"retry-after", b"1")))
        self.write(respond_bytes(respond, keep_alive=False, client_http10=False, no_body=False))
        self.close()


def _version(version: str) -> bytes:
    """A request's HTTP version other than 1.1 and 1.0: a later 1.x is served as 1.1 (RFC 9110
    §2.5); anything else (0.9, 2.0 in a text head) is refused."""
    major, dot, minor = version.partition(".")
    if major == "1" and dot and minor.isdigit():
        return b"1.1"
    raise _BadHead(505, f"HTTP/{version} is not supported here; send HTTP/1.1")


def _origin_form(
    target: bytes, headers: tuple[tuple[bytes, bytes], ...]
) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
    """An absolute-form target (`http://host:port/path`) as a path and the headers with Host set
    to its authority: the target's authority wins over the Host header (RFC 9112 §3.2.2), for
    the routing and for the upstream alike, so that both see one target."""
    scheme, sep, rest = target.partition(b"://")
    authority, slash, path = rest.partition(b"/")
    if not sep or scheme.lower() not in (b"http", b"https") or not authority or b"@" in authority:
        raise _BadHead(400, "the request target must be a path starting with / or an http(s) URL with a host")
    kept = tuple(header for header in headers if header[0].lower() != b"host")
    return slash + path if slash else b"/", (*kept, (b"host", authority))


def _is_chunked(transfer_encoding: bytes) -> bool:
    """Whether a request's Transfer-Encoding is the one coding the gateway decodes (the parser
    has checked that `chunked` comes last); any other coding is refused rather than dropped."""
    if transfer_encoding.strip().lower() != b"chunked":
        raise _BadHead(
            501, "Transfer-Encoding other than chunked is not supported; send the body chunked only"
        )
    return True
