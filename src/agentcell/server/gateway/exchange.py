"""One proxied request/response exchange: route it, stream it upstream, stream the answer back.

An `Exchange` is created when a request head is parsed and lives until its response is written
(or the client goes away). It is driven by callbacks from two sides, never by a task of its own:

    client connection ──on_request_body/complete──▶ Exchange ──write──▶ UpstreamConnection
    client connection ◀──queue/flush/write─────── Exchange ◀──on_response_*── UpstreamConnection

States: NEW → ROUTING → CONNECTING → WAITING (request sent, no response head yet) → STREAMING
(response head sent) → DONE, or WAITING → TUNNEL (after a 101) → DONE. The router is awaited in
one task per request; everything after it is plain callbacks (no task, no thread).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from agentcell.server.gateway.asgi import AppCall, http_scope
from agentcell.server.gateway.headers import (
    Framing,
    interim_head,
    plan_response,
    respond_bytes,
    upgrade_response_head,
    upstream_request_head,
)
from agentcell.server.gateway.route import (
    AppUpstream,
    Forward,
    RequestHead,
    Respond,
    Route,
    UpstreamAddress,
    UpstreamGone,
)
from agentcell.server.gateway.upstream import UpstreamConnection

if TYPE_CHECKING:
    from agentcell.server.gateway.connection import ClientConnection
    from agentcell.server.gateway.server import GatewayServer

log = logging.getLogger(__name__)

NEW, ROUTING, CONNECTING, WAITING, STREAMING, TUNNEL, DONE = range(7)

PENDING_LIMIT = 256 * 1024  # request bytes held while routing/connecting before the client is paused
REPLAY_LIMIT = 64 * 1024  # a request is re-sent on a fresh connection only if this much was sent
CLIENT_GONE = 499
_REPLAYABLE = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


class Exchange:
    """The proxy state machine for one request (see the module docstring)."""

    __slots__ = (
        "body_filter",
        "bytes_in",
        "bytes_out",
        "conn",
        "deadline",
        "duration_s",
        "framing",
        "head",
        "is_head",
        "keep_alive",
        "pending",
        "pending_size",
        "preset",
        "replay",
        "replay_size",
        "req_chunked",
        "request_complete",
        "retried",
        "route",
        "server",
        "started",
        "state",
        "status",
        "task",
        "timeout_s",
        "trailers",
        "tunnel_buffer",
        "until_close",
        "upgrade",
        "upstream",
    )

    def __init__(
        self,
        conn: ClientConnection,
        head: RequestHead,
        *,
        keep_alive: bool,
        chunked: bool = False,
        upgrade: bytes | None = None,
        preset: Respond | None = None,
    ) -> None:
        self.conn = conn
        self.server: GatewayServer = conn.server
        self.head = head
        self.keep_alive = keep_alive
        self.is_head = head.method == b"HEAD"
        self.req_chunked = chunked
        self.upgrade = upgrade
        self.preset = preset
        self.request_complete = False
        self.state = NEW
        self.server.exchanges_in_flight += 1
        self.started = time.monotonic()
        self.duration_s = 0.0  # once done (see `report`)
        self.timeout_s = self.server.request_timeout_s
        self.deadline = math.inf
        self.bytes_in = 0
        self.bytes_out = 0
        self.status = 0
        self.route: Route | None = None
        self.task: asyncio.Task[Route] | asyncio.Task[UpstreamConnection] | None = None
        self.upstream: UpstreamConnection | AppCall | None = None
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        self.retried = False
        self.framing = Framing.NONE
        self.body_filter: Callable[[bytes], bytes] | None = None
        self.until_close = False
        self.trailers: list[bytes] | None = None
        self.tunnel_buffer: list[bytes] = []

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Begin routing; called once the exchange is first in its connection's queue."""
        self.state = ROUTING
        conn = self.conn
        self.deadline = deadline = conn.loop.time() + self.timeout_s
        if deadline < conn.timer_at:
            conn.arm_timer(deadline)
        if self.preset is not None:
            self._respond(self.preset)
        elif self.head.method == b"CONNECT":  # (the parser reads nothing after it: close)
            self.keep_alive = False
            self._fail(405, "invalid_argument", "CONNECT is not supported: this is not a forward proxy")
        else:
            try:
                route = self._route_now()
            except Exception as exc:
                self._on_router_error(exc)
                return
            if route is not None:
                self._on_route(route)
                return
            task = self.conn.loop.create_task(self.server.router.route(self.head))
            self.task = task
            task.add_done_callback(self._on_routed)

    def _route_now(self) -> Route | None:
        """The route without a task, when it can be had: the connection's pin (the last Forward's
        `reuse`), else the router's `route_nowait`; None means it must be awaited."""
        conn = self.conn
        pin = conn.pin
        if pin is not None:
            route = pin(self.head)
            if route is not None:
                return route
            conn.pin = None
        route_nowait = self.server.route_nowait
        return None if route_nowait is None else route_nowait(self.head)

    def _on_routed(self, task: asyncio.Task[Route]) -> None:
        self.task = None
        if task.cancelled():
            if self.state == ROUTING:
                self._fail(500, "internal", "routing was cancelled")
            return
        exc = task.exception()
        if exc is not None:
            if self.state == ROUTING:
                self._on_router_error(exc)
            return
        route = task.result()
        if self.state != ROUTING:  # the client left or the request timed out meanwhile
            if route.on_complete is not None:
                self._call_on_complete(route, time.monotonic() - self.started)
            return
        self._on_route(route)

    def _on_router_error(self, exc: BaseException) -> None:
        log.error("router failed for %r", self.head, exc_info=exc)
        self._fail(500, "internal", "the gateway failed to route this request")

    def _on_route(self, route: Route) -> None:
        self.route = route
        if isinstance(route, Forward):
            self.conn.pin = route.reuse
            if route.timeout_s is not None:
                self.timeout_s = route.timeout_s
                self._extend_deadline()
            self.state = CONNECTING
            if isinstance(route.upstream, AppUpstream):
                self._call_app(route, route.upstream)
                return
            upstream = self.server.pool.take_idle(route.upstream)
            if upstream is not None:
                self._attach(upstream)
            else:
                self._connect(route.upstream)
            if route.on_routed is not None:  # (no answer can have come yet: it needs a read)
                route.on_routed()
        elif isinstance(route, Respond):
            self._respond(route)
        else:
            self.route = None
            self._fail(500, "internal", f"the router returned {type(route).__name__}, not a Route")

    def _connect(self, address: UpstreamAddress) -> None:
        task = self.conn.loop.create_task(self.server.pool.connect(address))
        self.task = task
        task.add_done_callback(self._on_connected)

    def _on_connected(self, task: asyncio.Task[UpstreamConnection]) -> None:
        self.task = None
        if task.cancelled():
            return
        exc = task.exception()
        if self.state != CONNECTING:
            if exc is None:
                task.result().close()
            return
        if exc is not None:
            log.info("cannot connect to upstream for %r: %s", self.head, exc)
            refused = "the upstream is not accepting connections"
            # an UpstreamGone was worded by the router already
            message = str(exc) if isinstance(exc, UpstreamGone) else self._loss_message(refused)
            self._fail(502, "unavailable", message)
            return
        self._attach(task.result())

    def _attach(self, upstream: UpstreamConnection) -> None:
        """Bind an upstream connection and send the request head plus any body read so far."""
        route = self.route
        assert isinstance(route, Forward)
        self.upstream = upstream
        upstream.bind(self, is_head=self.is_head)
        self.state = WAITING
        if self.retried and self.replay is not None:  # resend all the failed connection got
            data = self.replay + self.pending
        else:
            head = self.head
            request_head = upstream_request_head(
                head,
                path=route.rewrite_path if route.rewrite_path is not None else head.raw_path,
                chunked=self.req_chunked,
                upgrade=self.upgrade,
                proto=self.server.proto,
                trust_forwarded=self.server.trust_forwarded,
                drop=route.drop_headers,
                host=route.host,
            )
            self.replay = [request_head]
            self.replay_size = len(request_head)
            if not self.pending:  # the common case: a request with no body, or none read yet
                upstream.write(request_head)
                self._match_flow(upstream)
                return
            data = [request_head, *self.pending]
        pending_size = self.pending_size
        self._remember(self.pending, pending_size)
        self.pending = []
        self.pending_size = 0
        if pending_size > PENDING_LIMIT:
            self.conn.set_read_blocked(self.conn.BODY, False)
        upstream.writelines(data)
        self._match_flow(upstream)

    def _call_app(self, route: Forward, target: AppUpstream) -> None:
        """Hand the request to an in-process app, with the body read so far."""
        head = self.head
        path = route.rewrite_path if route.rewrite_path is not None else head.raw_path
        length = head.index.get(b"content-length")
        scope = http_scope(head, path, self.server.proto.decode(), self.conn.sockname)
        call = AppCall(self, target.app, scope, int(length) if length and length.isdigit() else 0)
        self.upstream = call
        self.state = WAITING
        self.replay = None  # nothing to resend: no connection can go stale under it
        pending, self.pending = self.pending, []
        if self.pending_size > PENDING_LIMIT:
            self.conn.set_read_blocked(self.conn.BODY, False)
        self.pending_size = 0
        call.writelines(pending)
        self._match_flow(call)
        self.server.run_app(call)

    def _match_flow(self, upstream: UpstreamConnection | AppCall) -> None:
        """Carry each side's backpressure over to a newly bound upstream connection."""
        if self.conn.write_paused:
            upstream.set_reading(False)
        if upstream.write_paused:  # a reused connection still flushing, or this request's body
            self.conn.on_upstream_writable(False)

    def _remember(self, sent: list[bytes], size: int) -> None:
        """Keep what was sent upstream so a stale pooled connection can be retried once."""
        if self.replay is None:
            return
        self.replay_size += size
        if self.replay_size > REPLAY_LIMIT:
            self.replay = None
        elif sent:
            self.replay.extend(sent)

    def _finish(self, *, client_gone: bool = False) -> None:
        if self.state == DONE:
            return
        self.state = DONE
        self.server.exchanges_in_flight -= 1
        self.deadline = math.inf
        route = self.route
        if (route is not None and route.on_complete is not None) or self.server.access_log is not None:
            if self.conn.flush_due:  # (the answer is written at the end of this turn: report after)
                self.server.report_soon(self)
            else:
                self.report()
        if not client_gone:
            self.conn.on_exchange_done(self)

    def report(self) -> None:
        """Run the route's on_complete and the access-log hook; their failures are only logged."""
        route = self.route
        duration = time.monotonic() - self.started
        if route is not None and route.on_complete is not None:
            self._call_on_complete(route, duration)
        access_log = self.server.access_log
        if access_log is not None:
            self.duration_s = duration
            try:
                access_log(self)  # (the exchange is its own AccessRecord: it is done)
            except Exception:
                log.exception("access log hook failed")

    @property
    def context(self) -> Mapping[str, Any] | None:
        """The route's context, for the access log (see `AccessRecord`)."""
        route = self.route
        return route.context if route is not None else None

    def _call_on_complete(self, route: Route, duration: float) -> None:
        assert route.on_complete is not None
        try:
            route.on_complete(self.status or CLIENT_GONE, self.bytes_in, self.bytes_out, duration)
        except Exception:
            log.exception("on_complete hook failed for %r", self.head)

    # --- answers made by the gateway ----------------------------------------------------------

    def _respond(self, respond: Respond) -> None:
        if self.route is None:
            self.route = respond
        self.status = respond.status
        # (After an upgrade request the parser reads no more requests on this connection.)
        if not self.request_complete or self.upgrade is not None or self.server.draining:
            self.keep_alive = False
        self.bytes_out += 0 if self.is_head else len(respond.body)
        self.conn.write(
            respond_bytes(
                respond,
                keep_alive=self.keep_alive,
                client_http10=self.head.http_version == b"1.0",
                no_body=self.is_head,
            )
        )
        self._finish()

    def _fail(self, status: int, code: str, message: str) -> None:
        """End the exchange with an error: an envelope if no response head was sent yet.

        The route (if any) stays, so its on_complete and context see the error status.
        """
        self._drop_work()
        if self.status:
            self.keep_alive = False
            self.conn.close()
            self._finish()
        else:
            self._respond(self.server.error_responder(status, code, message, self.head.request_id))

    def fail_request(self, status: int, code: str, message: str) -> None:
        """The client sent something unusable mid-request (a malformed body)."""
        self.keep_alive = False
        self._fail(status, code, message)

    def _drop_work(self) -> None:
        """Cancel routing/connecting and close (never pool) the upstream connection."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.close()

    def _extend_deadline(self) -> None:
        self.deadline = self.conn.loop.time() + self.timeout_s
        self.conn.arm_timer(self.deadline)

    # --- events from the client connection ----------------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.req_chunked:
            self._send_request_bytes([b"%x\r\n" % len(data), data, b"\r\n"], len(data) + 8)
        else:
            self._send_request_bytes([data], len(data))

    def on_request_trailer(self, name: bytes, value: bytes) -> None:
        if self.trailers is None:
            self.trailers = []
        self.trailers += (name, b": ", value, b"\r\n")

    def on_request_complete(self) -> None:
        self.request_complete = True
        if self.req_chunked:
            end = b"0\r\n" + b"".join(self.trailers) + b"\r\n" if self.trailers else b"0\r\n\r\n"
            self._send_request_bytes([end], len(end))

    def _send_request_bytes(self, parts: list[bytes], size: int) -> None:
        state = self.state
        if state in (WAITING, STREAMING):
            upstream = self.upstream
            assert upstream is not None
            if len(parts) > 1:
                upstream.writelines(parts)
            else:
                upstream.write(parts[0])
            if self.replay is not None:
                self._remember(parts, size)
            if state == WAITING:
                self._extend_deadline()
        elif state < WAITING:
            self.pending += parts
            self.pending_size += size
            if self.pending_size > PENDING_LIMIT:
                self.conn.set_read_blocked(self.conn.BODY, True)
        # DONE: the response came first; the connection closes after it, the rest is dropped.

    def on_tunnel_client_data(self, data: bytes) -> None:
        """Bytes from the client after its upgrade request head."""
        self.bytes_in += len(data)
        if self.state == TUNNEL and self.upstream is not None:
            self.upstream.write(data)
        elif self.state != DONE:
            self.tunnel_buffer.append(data)
            if sum(map(len, self.tunnel_buffer)) > PENDING_LIMIT:
                self.conn.set_read_blocked(self.conn.BODY, True)

    def on_client_writable(self, writable: bool) -> None:
        if self.upstream is not None:
            self.upstream.set_reading(writable)

    def on_client_lost(self) -> None:
        if self.state == DONE:
            return
        self._drop_work()
        if not self.status:
            self.status = CLIENT_GONE
        self.keep_alive = False
        self._finish(client_gone=True)

    def on_body_timeout(self, timeout_s: float) -> None:
        """The client stopped sending the request body: 408 if no response began, else the
        exchange ends as if the client were gone, and the connection is dropped (its response
        cannot be finished, and a client that sends nothing may read nothing either)."""
        if not self.status:
            message = f"the request body stopped arriving for {timeout_s:g} s"
            self.fail_request(408, "timeout", f"{message}; send it faster or in smaller requests")
            return
        self.on_client_lost()
        self.conn.abort()

    def on_upstream_send_timeout(self, timeout_s: float) -> None:
        """The upstream took none of the request body (or tunnel bytes) sent to it for `timeout_s`
        (nginx's proxy_send_timeout): 504 if no response began, else the response is cut off; the
        upstream connection is dropped and the client's closes (its body cannot be read on)."""
        log.info("the upstream took nothing sent to it for %g s: ending %r", timeout_s, self.head)
        self.keep_alive = False
        message = f"the upstream took none of the request body for {timeout_s:g} s; retry later"
        self._fail(504, "timeout", message)

    def on_timer(self, now: float) -> None:
        """The connection's timer fired; time out if no response head arrived in time."""
        if now >= self.deadline and self.state < STREAMING:
            self._fail(504, "timeout", f"no response from the upstream within {self.timeout_s:g} s")

    # --- events from the upstream connection (ResponseSink) -----------------------------------

    def on_response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self.state != WAITING:
            return
        route = self.route
        assert isinstance(route, Forward)
        if status == 101:
            self._start_tunnel(headers, route)
        elif status < 200:
            if self.head.http_version != b"1.0":
                self.conn.queue(interim_head(status, headers))
                if not self.request_complete:
                    self.conn.on_interim_response(self)
        else:
            if route.on_response_head is not None:
                self._call_response_hook(route, status, headers)
            self.status = status
            self.state = STREAMING
            self.deadline = math.inf
            head, framing, self.keep_alive, self.until_close, length = plan_response(
                status,
                headers,
                no_body=self.is_head or status == 204 or status == 304,
                client_http10=self.head.http_version == b"1.0",
                # An answer that comes before the request body was read ends the connection, and
                # says so: the unread rest of the body cannot be told from a next request.
                keep_alive=self.keep_alive
                and self.request_complete
                and self.upgrade is None
                and not self.server.draining,
                extra=route.add_response_headers,
                request_id=self.head.request_id.encode(),
            )
            self.framing = framing
            if route.body_filter is not None and framing != Framing.LENGTH:
                self.body_filter = route.body_filter
            self.conn.out.append(head)
            if framing == Framing.LENGTH and length > 0:
                upstream = self.upstream
                assert upstream is not None
                upstream.body_length = length

    def _start_tunnel(self, headers: list[tuple[bytes, bytes]], route: Forward) -> None:
        if self.upgrade is None:
            self._fail(502, "unavailable", "the upstream switched protocols without an upgrade request")
            return
        self.status = 101
        self.state = TUNNEL
        self.deadline = math.inf
        self.keep_alive = False
        self.conn.queue(upgrade_response_head(headers, self.upgrade, route.add_response_headers))
        self.conn.enter_tunnel(self)
        early, self.tunnel_buffer = self.tunnel_buffer, []
        if early and self.upstream is not None:
            self.upstream.writelines(early)
            self.conn.set_read_blocked(self.conn.BODY, False)

    def _call_response_hook(self, route: Forward, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        assert route.on_response_head is not None
        try:
            route.on_response_head(status, headers)
        except Exception:
            log.exception("on_response_head hook failed for %r", self.head)

    def on_response_body(self, data: bytes) -> None:
        if self.body_filter is not None:
            data = self.body_filter(data)
            if not data:
                return
        self.bytes_out += len(data)
        framing = self.framing
        if framing == Framing.CHUNKED:
            self.conn.out += (b"%x\r\n" % len(data), data, b"\r\n")
        elif framing != Framing.NONE:
            self.conn.out.append(data)

    def on_response_flush(self) -> None:
        if self.state != DONE:  # (once done, its last bytes wait for the end of the turn)
            self.conn.flush()

    def on_response_complete(self, keep_alive: bool) -> None:
        if self.state != STREAMING:
            return
        if self.framing == Framing.CHUNKED:
            self.conn.queue(b"0\r\n\r\n")
        # The end of the answer is written at the end of this turn, with the other connections'
        # (see GatewayServer.flush_soon), and the bookkeeping (the route's on_complete, metering,
        # the access line) after it (see _finish): none of it is on the answer's critical path.
        self.conn.flush_soon()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            if keep_alive and self.request_complete:
                upstream.release()
            else:
                upstream.close()
        if not self.request_complete:
            self.keep_alive = False
        self._finish()

    def on_upstream_lost(self, error: str) -> None:
        state = self.state
        upstream, self.upstream = self.upstream, None
        if state == WAITING:
            if self._may_retry(upstream):
                self._retry()
            else:
                log.info("upstream failed before responding to %r: %s", self.head, error)
                closed = "the upstream closed the connection before responding"
                self._fail(502, "unavailable", self._loss_message(closed))
        elif state == STREAMING and self.until_close:
            if self.framing == Framing.CHUNKED:
                self.conn.queue(b"0\r\n\r\n")
            self.conn.flush_soon()
            self.keep_alive = self.keep_alive and self.request_complete
            self._finish()
        elif state in (STREAMING, TUNNEL):
            self.keep_alive = False
            self.conn.close()
            self._finish()

    def _loss_message(self, default: str) -> str:
        route = self.route
        explain = route.explain_loss if isinstance(route, Forward) else None
        return (explain() if explain is not None else None) or default

    def _may_retry(self, upstream: UpstreamConnection | AppCall | None) -> bool:
        """Only a reused connection, only once, only a replayable request (Go's net/http rule:
        safe method or an Idempotency-Key), only if all that was sent is still held."""
        return (
            upstream is not None
            and upstream.requests > 1
            and self.replay is not None
            and not self.retried
            and self.status == 0
            and (self.head.method in _REPLAYABLE or b"idempotency-key" in self.head.index)
        )

    def _retry(self) -> None:
        """A reused keep-alive connection was closed under us: resend once on a new one."""
        self.retried = True
        self.state = CONNECTING
        route = self.route
        assert isinstance(route, Forward) and not isinstance(route.upstream, AppUpstream)  # (never retried)
        self._connect(route.upstream)

    def on_tunnel_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.conn.write(data)

    def on_upstream_writable(self, writable: bool) -> None:
        self.conn.on_upstream_writable(writable)

    def on_app_error(self, message: str) -> None:
        """An in-process app failed, or returned without finishing its answer."""
        if self.state == WAITING:
            log.info("the app failed before answering %r: %s", self.head, message)
            self._fail(500, "internal", "the server failed to answer this request; see its log")
        else:
            self.on_upstream_lost(message)
