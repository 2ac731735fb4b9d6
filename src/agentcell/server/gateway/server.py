"""`GatewayServer`: the gateway's HTTP/1.1 front server and reverse proxy.

It owns its listening sockets, every client connection and the upstream connection pool, and
closes them all in `aclose()`. What happens to each request is the router's decision (see
`route.py`); how bytes move is `connection.py` (client side), `exchange.py` (one request) and
`upstream.py` (upstream side). Run it on uvloop for the measured numbers; plain asyncio works.

    server = GatewayServer(router, request_timeout_s=30)
    await server.start("127.0.0.1", 8700)
    await server.start(path="/run/agentcell/gw.sock")   # more listeners, same server
    ...
    await server.aclose(drain_timeout_s=10)              # stop accepting, drain, close
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Callable
from types import TracebackType

from agentcell.server.gateway.asgi import AppCall
from agentcell.server.gateway.connection import ClientConnection
from agentcell.server.gateway.exchange import Exchange
from agentcell.server.gateway.headers import error_envelope
from agentcell.server.gateway.route import AccessLog, ErrorResponder, RequestHead, Route, Router
from agentcell.server.gateway.upstream import UpstreamPool

log = logging.getLogger(__name__)

REFUSAL_LOG_S = 10.0
"""connections refused over a cap are counted, and logged at most this often"""


class GatewayServer:
    """Accepts HTTP/1.1 clients and proxies each request where `router` says.

    `router.route_nowait(head)`, when the router has it (see `NowaitRouter`), is tried first and
    answers the warm path without creating a task.

    `request_timeout_s`: a request with no response head this long after its last byte was read
    (routing included; the router's call is cancelled) gets a 504 envelope; a streaming response
    or an upgraded connection has no time limit. `keepalive_timeout_s`: an idle client connection
    is closed after this long. `header_timeout_s`: a request head that has begun to arrive and is
    not complete this long after gets 408 and the connection closes (nginx's
    client_header_timeout; counted while no request is queued before it, and instead of the
    keep-alive timeout). `body_timeout_s`: when no byte of a request body still due arrives for
    this long while the gateway waits for it, the request gets 408 (or is cut off, if its
    response began) and the connection closes (nginx's client_body_timeout: the time between two
    reads, so a slow but steady upload of any size goes on; time that reading is paused because
    the upstream is not taking the body, or before a 100 Continue is relayed, does not count).
    `send_timeout_s`: when a client takes none of the bytes sent to it for this long (its
    connection's write buffer stays full: a download, an event stream it stopped reading), the
    connection is dropped and its requests end as if the client had gone; when an upstream takes
    none of a request body (or tunnel bytes) for this long, the request gets 504 (or is cut off, if
    its response began) and the client connection closes (nginx's send_timeout and
    proxy_send_timeout: any bytes taken restart the clock, so a slow but steady reader of any
    size goes on; a stalled side is looked at every quarter timeout, at no cost to the others).
    `max_connections`: client connections open at once;
    `max_connections_per_client`: of those, from one peer address (0: no limit). The address is
    the TCP peer's, forwarded headers never count: behind a reverse proxy every client is the
    proxy, so set it to 0 or above the proxy's connections; Unix-socket clients are not counted
    per address. A connection past either cap is answered 503 and closed at once, unread; the
    others are not disturbed, and new ones are admitted again as soon as some close.
    `max_header_bytes`: a larger request head gets 431. `upstream_idle_timeout_s`: pooled
    upstream connections idle this long are closed. `trust_forwarded`: keep and extend the
    client's X-Forwarded-* headers (only when another proxy sits in front). `error_responder`
    makes the bodies of the gateway's own errors (400, 405, 408, 431, 500, 502, 503, 504).
    """

    def __init__(
        self,
        router: Router,
        *,
        request_timeout_s: float = 60.0,
        max_header_bytes: int = 64 * 1024,
        keepalive_timeout_s: float = 75.0,
        header_timeout_s: float = 30.0,
        body_timeout_s: float = 60.0,
        send_timeout_s: float = 60.0,
        max_connections: int = 10_000,
        max_connections_per_client: int = 0,
        upstream_idle_timeout_s: float = 4.0,
        max_idle_upstream_per_address: int = 64,
        access_log: AccessLog | None = None,
        error_responder: ErrorResponder = error_envelope,
        trust_forwarded: bool = False,
        scheme: str = "http",
        backlog: int = 2048,
    ) -> None:
        self.router = router
        self.route_nowait: Callable[[RequestHead], Route | None] | None = getattr(
            router, "route_nowait", None
        )
        self.request_timeout_s = request_timeout_s
        self.max_header_bytes = max_header_bytes
        self.keepalive_timeout_s = keepalive_timeout_s
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.send_timeout_s = send_timeout_s
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.access_log = access_log
        self.error_responder = error_responder
        self.trust_forwarded = trust_forwarded
        self.proto = scheme.encode("ascii")
        self.backlog = backlog
        self.pool = UpstreamPool(
            idle_timeout_s=upstream_idle_timeout_s, max_idle_per_address=max_idle_upstream_per_address
        )
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[asyncio.Server] = []
        self._connections: set[ClientConnection] = set()
        self._to_flush: list[ClientConnection] = []
        self.exchanges_in_flight = 0  # requests read and not yet answered, on all connections
        self._to_report: list[Exchange] = []  # exchanges whose answers are in _to_flush
        self._per_client: dict[str, int] = {}  # open connections by peer address (when capped)
        self._refused = 0  # connections refused since the last warning about it
        self._refused_logged_at = -math.inf
        self._drained = asyncio.Event()
        self._app_calls: set[asyncio.Task[None]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "GatewayServer.start() was not called"
        return self._loop

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        path: str | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """Listen on `host:port`, on the Unix socket `path`, or on an already bound `sock`."""
        if self.draining:
            raise RuntimeError("GatewayServer is closing")
        self._loop = asyncio.get_running_loop()
        if sock is not None and sock.family == socket.AF_UNIX:
            listener = await self._loop.create_unix_server(
                self._new_connection, sock=sock, backlog=self.backlog
            )
        elif sock is not None:
            listener = await self._loop.create_server(self._new_connection, sock=sock, backlog=self.backlog)
        elif path is not None:  # (a stale socket file from an earlier run is replaced)
            listener = await self._loop.create_unix_server(self._new_connection, path, backlog=self.backlog)
        else:
            listener = await self._loop.create_server(
                self._new_connection, host, port, backlog=self.backlog, reuse_address=True
            )
        self._listeners.append(listener)

    @property
    def addresses(self) -> list[tuple[str, int] | str]:
        """Where the server listens: (host, port) for TCP, the path for Unix sockets."""
        found: list[tuple[str, int] | str] = []
        for listener in self._listeners:
            # (uvloop's `sockets` is a list where typeshed says tuple: compiled, the tuple is checked)
            sockets: list[socket.socket] = list(getattr(listener, "sockets"))  # noqa: B009
            for sock in sockets:
                name = sock.getsockname()
                found.append(name if isinstance(name, str) else (name[0], name[1]))
        return found

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def aclose(
        self,
        *,
        drain_timeout_s: float = 10.0,
        before_abort: Callable[[], object] | None = None,
        before_abort_s: float = 1.0,
    ) -> None:
        """Stop accepting, let in-flight requests finish for up to `drain_timeout_s`, close all.

        `before_abort`, when given, is called `before_abort_s` (at most half the drain) before
        that deadline if requests are still in flight: the last chance for responses that would
        run on (streams) to end themselves cleanly instead of being cut off."""
        if self._loop is None:
            return
        self.draining = True
        for listener in self._listeners:
            listener.close()
        for conn in list(self._connections):
            conn.close_if_idle()
        last_call_s = 0.0 if before_abort is None else min(before_abort_s, drain_timeout_s / 2)
        if not await self._drain(drain_timeout_s - last_call_s) and before_abort is not None:
            before_abort()
            await self._drain(last_call_s)
        if busy := len(self._connections):
            log.warning("closing %d connections still busy after %ss", busy, drain_timeout_s)
        for conn in list(self._connections):
            conn.abort()
        if self._connections:  # abort() reports connection_lost on the next loop turn
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), 1.0)
        self.pool.close()
        await self._end_app_calls()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()

    async def _drain(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every connection to close; True once they all have."""
        if self._connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), timeout_s)
        return not self._connections

    async def _end_app_calls(self) -> None:
        """Every connection is gone, so every in-process app call has heard a disconnect; cancel
        those that did not end on it."""
        calls = list(self._app_calls)
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.wait(calls, timeout=5.0)

    async def __aenter__(self) -> GatewayServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # --- used by connections ------------------------------------------------------------------

    def run_app(self, call: AppCall) -> None:
        """Call an in-process app for one exchange, in a task of its own."""
        task = self.loop.create_task(call.run())
        self._app_calls.add(task)
        task.add_done_callback(self._app_calls.discard)

    def flush_soon(self, conn: ClientConnection) -> bool:
        """Write `conn`'s queued bytes (the end of an answer) at the end of this turn of the loop,
        with the other answers that end in it; True if they wait for it, False if written now.

        Each write to a client whose process sleeps wakes it, which on a VM costs the writer
        more than the write itself; writes made back to back wake it once. But waiting for the
        end of the turn costs a callback per turn, as much as one answer gains from it, so an
        answer that nothing else is in flight beside is written at once. Measured with wrk
        against a trivial upstream, side by side with writing each answer at once: at 50
        connections 16% less gateway CPU per request and 23% more requests/s; at one connection
        no difference (see bench/RESULTS.md, session 21)."""
        to_flush = self._to_flush
        if self.exchanges_in_flight <= 1 and not to_flush:
            conn.flush()
            return False
        to_flush.append(conn)
        if len(to_flush) == 1:
            self.loop.call_soon(self._flush_all)
        return True

    def report_soon(self, exchange: Exchange) -> None:
        """Run an exchange's bookkeeping once its answer, waiting in a `flush_soon`, is written."""
        self._to_report.append(exchange)

    def _flush_all(self) -> None:
        to_flush, self._to_flush = self._to_flush, []
        for conn in to_flush:
            try:
                conn.flush()
            except Exception:  # (one connection's failure must not hold back the others' bytes)
                log.exception("writing to %s failed", conn.client)
        to_report, self._to_report = self._to_report, []
        for exchange in to_report:
            exchange.report()

    def _new_connection(self) -> ClientConnection:
        return ClientConnection(self)

    def admit(self, conn: ClientConnection) -> str | None:
        """Count a new connection in, or say why it is refused (a cap is reached)."""
        if len(self._connections) >= self.max_connections:
            return self._refuse(f"the server has its maximum of {self.max_connections} connections open")
        cap, client = self.max_connections_per_client, conn.client
        if cap and client:
            count = self._per_client.get(client, 0)
            if count >= cap:
                return self._refuse(f"{client} has its maximum of {cap} connections open")
            self._per_client[client] = count + 1
        self._connections.add(conn)
        return None

    def _refuse(self, reason: str) -> str:
        """Count a refusal; warn at most every REFUSAL_LOG_S (a flood must not flood the log)."""
        self._refused += 1
        now = self.loop.time()
        if now - self._refused_logged_at >= REFUSAL_LOG_S:
            log.warning("refused %d connections (503): %s", self._refused, reason)
            self._refused, self._refused_logged_at = 0, now
        return reason

    def forget(self, conn: ClientConnection) -> None:
        if conn not in self._connections:
            return  # (refused: never counted)
        self._connections.discard(conn)
        client = conn.client
        if self.max_connections_per_client and client:
            left = self._per_client.pop(client, 1) - 1
            if left:
                self._per_client[client] = left
        if self.draining and not self._connections:
            self._drained.set()
