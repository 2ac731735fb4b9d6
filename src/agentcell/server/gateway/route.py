"""What the gateway's HTTP engine asks of its router, and what it hands to hooks.

The engine parses a request head into a `RequestHead`, awaits `Router.route(head)` once, and
acts on the answer: `Forward` streams the exchange to an upstream (a TCP address or a Unix
socket), `Respond` writes a small complete response (errors, redirects). Everything here is a
plain value; nothing does I/O.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentcell.server.gateway.request_head import REQUEST_ID_HEADER, RequestHead, new_request_id

__all__ = ["REQUEST_ID_HEADER", "RequestHead", "new_request_id"]


@dataclass(frozen=True, slots=True)
class TcpUpstream:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class UnixUpstream:
    path: str


@dataclass(frozen=True, slots=True)
class SocketUpstream:
    """An upstream reached through a socket its owner opens, e.g. inside an instance's network
    namespace. `connect()` returns a connected stream socket; connections are pooled by `key`
    (two SocketUpstreams with the same key share idle connections; `connect` is not compared).
    """

    key: str
    connect: Callable[[], Awaitable[socket.socket]] = field(compare=False, hash=False, repr=False)


AsgiMessage = MutableMapping[str, Any]
AsgiApp = Callable[
    [AsgiMessage, Callable[[], Awaitable[AsgiMessage]], Callable[[AsgiMessage], Awaitable[None]]],
    Awaitable[None],
]


@dataclass(frozen=True, slots=True, eq=False)
class AppUpstream:
    """An ASGI application in the gateway's own process (the control plane): a request reaches it
    with no socket and no second HTTP parse. Only plain requests go this way (see
    `asgi.serves_in_process`); upgrades, chunked bodies and `Expect` go through a socket."""

    app: AsgiApp


UpstreamAddress = TcpUpstream | UnixUpstream | SocketUpstream


class UpstreamGone(ConnectionError):
    """Raised by a `SocketUpstream`'s `connect` whose owner knows why its upstream cannot be
    reached: the message is what the client is told, in the 502 envelope."""


CompletionCallback = Callable[[int, int, int, float], None]
"""on_complete(status, bytes_in, bytes_out, duration_s): called exactly once per routed request.

`status` is the status the client received (499 when the client went away before a response
head, 502/504 for upstream failures), `bytes_in` the request body bytes read from the client,
`bytes_out` the response body bytes written to it (for an upgraded connection: the bytes spliced
each way), `duration_s` from the end of the request head to the end of the exchange.
"""


@dataclass(slots=True)
class Forward:
    """Stream the request to `upstream` (TCP, Unix socket, or a socket opened on demand) and the
    response back.

    `rewrite_path` replaces the path sent upstream (the query string is kept). `timeout_s`, when
    set, replaces the server's request timeout for this request. `context` is opaque to the engine
    and handed to the access log (function, session and instance ids). `on_response_head` sees the
    upstream's final status and headers before they are sent on. `body_filter` rewrites response
    body bytes on their way out; it only runs on responses without a Content-Length (streams such
    as server-sent events), whose framing the gateway chooses.
    """

    upstream: UpstreamAddress | AppUpstream
    rewrite_path: bytes | None = None
    add_response_headers: Sequence[tuple[bytes, bytes]] = ()
    on_complete: CompletionCallback | None = None
    context: Mapping[str, Any] | None = None
    timeout_s: float | None = None
    on_response_head: Callable[[int, Sequence[tuple[bytes, bytes]]], None] | None = None
    body_filter: Callable[[bytes], bytes] | None = None
    drop_headers: frozenset[bytes] = frozenset()
    """request headers (lowercase names) not sent upstream, e.g. the caller's agentcell API key"""
    host: bytes | None = None
    """the Host header sent upstream in place of the client's (which X-Forwarded-Host keeps);
    `drop_headers` must then name `host`"""
    explain_loss: Callable[[], str | None] | None = None
    """why the upstream was lost before it answered, when the integrator knows better than the
    engine (its instance was stopped on purpose); None keeps the engine's own words"""
    on_routed: Callable[[], None] | None = None
    """called once the request is on its way (its head written upstream, or its connection
    begun), in the same callback as its routing: what need not delay the request's first byte"""
    reuse: Callable[[RequestHead], Forward | Respond | None] | None = None
    """the route of the client connection's next request, when the router can tell it cheaply
    (a warm session's pin): the engine calls it first for that request; None means "route it"."""


@dataclass(slots=True)
class Respond:
    """Answer the request without an upstream: a complete response with a known length."""

    status: int
    headers: Sequence[tuple[bytes, bytes]] = ()
    body: bytes = b""
    context: Mapping[str, Any] | None = None
    on_complete: CompletionCallback | None = None


Route = Forward | Respond


class Router(Protocol):
    """Decides where each request goes. Implemented by the integrator (scheduler lookup)."""

    async def route(self, head: RequestHead) -> Route:
        """Called once per request, after its head is parsed and before its body is read.

        Runs in a task of its own; cancelled when the client disconnects or the request times
        out first. An exception becomes a 500 envelope. The warm path should return without
        waiting on anything (an in-memory lookup).
        """
        ...


class NowaitRouter(Router, Protocol):
    """A router that can often answer without waiting: the engine's fastest path.

    The engine calls `route_nowait(head)` first. A `Route` answers the request with no task
    created (the warm path: a lookup in an in-memory index); None means "I would have to wait" and
    the engine awaits `route(head)` as usual. It must not block or raise for expected outcomes.
    """

    def route_nowait(self, head: RequestHead) -> Route | None: ...


class AccessRecord(Protocol):
    """What the access-log hook receives once per request: the engine's own record of the
    exchange, which does not change once handed over (a hook may keep it to read later)."""

    @property
    def head(self) -> RequestHead: ...
    @property
    def status(self) -> int:
        """The status the client received; 499 if it went away before a response head."""

    @property
    def duration_s(self) -> float:
        """From the end of the request head to the end of the exchange."""

    @property
    def bytes_in(self) -> int: ...
    @property
    def bytes_out(self) -> int: ...
    @property
    def context(self) -> Mapping[str, Any] | None:
        """The route's context (None if the request was never routed)."""


AccessLog = Callable[[AccessRecord], None]

ErrorResponder = Callable[[int, str, str, str], Respond]
"""error_responder(status, code, message, request_id) -> Respond, for errors the engine makes."""
