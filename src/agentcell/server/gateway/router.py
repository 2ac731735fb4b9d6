"""GatewayRouter: the scheduler behind the HTTP engine. `/fn/{name}/…` (or `Host: {name}.{domain}`)
goes to the session's instance; every other request goes to the control plane.

The warm path is: parse keys (pure), `Scheduler.route` (in-memory), build a Forward. No database,
no thread pool.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial

from agentcell.errors import AgentcellError, NotFound, NotRunning
from agentcell.protocol.common import STATUS_BY_CODE
from agentcell.protocol.functions import Affinity
from agentcell.server.auth.access import RequestAuth
from agentcell.server.auth.names import qualify
from agentcell.server.auth.principal import Principal
from agentcell.server.gateway import e2b, mcp
from agentcell.server.gateway.asgi import serves_in_process
from agentcell.server.gateway.e2b import SandboxPorts
from agentcell.server.gateway.keys import (
    MCP_SESSION_HEADER,
    FunctionTarget,
    function_target,
    mcp_session_key,
    session_key,
)
from agentcell.server.gateway.route import (
    AppUpstream,
    AsgiApp,
    CompletionCallback,
    Forward,
    RequestHead,
    Respond,
    Route,
    SocketUpstream,
    UpstreamAddress,
    UpstreamGone,
)
from agentcell.server.observability.telemetry import NullTelemetry, Telemetry
from agentcell.server.scheduler.scheduler import Lease, Scheduler

log = logging.getLogger(__name__)


def error_respond(
    status: int, code: str, message: str, request_id: str, retry_after_s: float | None = None
) -> Respond:
    body = json.dumps({"code": code, "message": message, "request_id": request_id}).encode()
    headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]
    if retry_after_s:
        headers.append((b"retry-after", str(max(1, round(retry_after_s))).encode()))
    return Respond(status, headers, body)


def domain_error(exc: AgentcellError, request_id: str) -> Respond:
    retry = getattr(exc, "retry_after_s", None)
    return error_respond(STATUS_BY_CODE.get(exc.code, 500), exc.code, exc.message, request_id, retry)


X_API_KEY = frozenset({b"x-api-key"})
HOST = frozenset({b"host"})
AUTHORIZATION = frozenset({b"authorization"})


def _key_header(affinity: Affinity) -> bytes:
    return MCP_SESSION_HEADER if affinity.kind == "mcp" else affinity.header.encode()


class GatewayRouter:
    def __init__(
        self,
        scheduler: Scheduler,
        control: UpstreamAddress,
        domain: str | None = None,
        telemetry: Telemetry | None = None,
        e2b: SandboxPorts | None = None,
        auth: RequestAuth | None = None,
        control_app: AsgiApp | None = None,
    ) -> None:
        self._auth = auth
        self._telemetry = telemetry or NullTelemetry()
        self._e2b = e2b
        self._scheduler = scheduler
        self._control = control
        self._control_app = AppUpstream(control_app) if control_app is not None else None
        self._domain = domain.lower().encode() if domain else None

    def _resolve(self, head: RequestHead) -> tuple[FunctionTarget, Affinity, str | None] | Route:
        """Which function and session key a request names — or the answer when that settles it."""
        target = function_target(head.raw_path, head.header(b"host"), self._domain)
        if target is None:
            return self._e2b_route(head) or Forward(self._control_for(head))
        try:
            target = self._authorized(head, target)
            affinity = self._scheduler.function(target.name).config.affinity
            key = session_key(affinity, head.header(_key_header(affinity)), head.header(b"cookie"))
            if key is None and affinity.kind == "mcp":
                legacy = mcp.query_session_id(head.query)  # a legacy SSE client's POST
                key = None if legacy is None else mcp_session_key(legacy, "query session_id")
        except AgentcellError as exc:
            self._telemetry.error(exc.code)
            return domain_error(exc, head.request_id)
        return target, affinity, key

    def _control_for(self, head: RequestHead) -> UpstreamAddress | AppUpstream:
        """The control plane: called in-process when the request is plain, else through its socket."""
        if self._control_app is not None and serves_in_process(head):
            return self._control_app
        return self._control

    def _authorized(self, head: RequestHead, target: FunctionTarget) -> FunctionTarget:
        """The caller's function of that name (tenant-qualified), once its key allows `invoke`;
        the header that carried the key is not forwarded to the instance."""
        if self._auth is None or not self._auth.required:
            return target
        principal = self._invoker(head)
        drop = X_API_KEY if head.header(b"x-api-key") else AUTHORIZATION
        return FunctionTarget(qualify(principal.tenant, target.name), target.path, target.mount, drop)

    def _invoker(self, head: RequestHead) -> Principal:
        """Whose key the request carries, once it may `invoke` (its tenant's rate taken)."""
        assert self._auth is not None
        x_api_key, authorization = head.header(b"x-api-key"), head.header(b"authorization")
        return self._auth.check(
            x_api_key.decode("latin-1") if x_api_key else None,
            authorization.decode("latin-1") if authorization else None,
            "invoke",
        )

    def _e2b_route(self, head: RequestHead) -> Route | None:
        """`Host: {port}-{sandboxId}.{e2b domain}`: envd and the code interpreter are served by the
        control plane; any other port is forwarded to the sandbox (E2B's `get_host(port)`)."""
        if self._e2b is None:
            return None
        found = e2b.sandbox_port(head.header(b"host"), self._e2b.domain)
        if found is None:
            signed = e2b.is_signed_file_url(head.raw_path, head.query)
            return Forward(self._control_for(head), rewrite_path=e2b.SIGNED_FILES_PATH) if signed else None
        if found.port in e2b.IN_SANDBOX_PORTS:
            return Forward(self._control_for(head), rewrite_path=e2b.control_path(found, head.raw_path))
        refused = e2b.refusal(self._e2b, found, head.header(e2b.TRAFFIC_TOKEN_HEADER))
        if refused is not None:
            return refused
        connect = partial(self._e2b.connect, found.sandbox_id, found.port)
        upstream = SocketUpstream(f"e2b:{found.sandbox_id}:{found.port}", connect)
        host = self._e2b.host_header(found.sandbox_id, found.port)
        return Forward(upstream) if host is None else Forward(upstream, drop_headers=HOST, host=host)

    def route_nowait(self, head: RequestHead) -> Route | None:
        """The warm path: a bound session on a ready instance, or a stateless function's ready
        instance with room, answered with no task or await.

        Its Forward carries a `WarmPin` (unless requests are traced, each with spans of its own):
        the client connection's next request with the same routing inputs reuses the route."""
        resolved = self._resolve(head)
        if not isinstance(resolved, tuple):
            return resolved
        target, affinity, key = resolved
        if affinity.kind == "none":
            lease, key = self._scheduler.route_free(target.name), None  # (picked per request)
        else:
            lease = self._scheduler.route_warm(target.name, key)
        if lease is None:
            return None
        forward = self._forward(lease, affinity, target, head)
        if self._telemetry.tracing is None:
            forward.reuse = WarmPin(self, head, target, _key_header(affinity), key, lease, forward).reuse
        return forward

    def reuse_warm(self, pin: WarmPin, head: RequestHead) -> Route | None:
        """`pin`'s route again, for a request with its routing inputs (see `WarmPin`): the key is
        checked (it may have been revoked; its tenant's rate applies) and the session must still
        be what `route_warm` would lease (a stateless pin's instance is picked again); None when
        anything changed (the full route then says what). The Forward leases the session once
        the request is on its way (`on_routed`)."""
        if self._auth is not None and self._auth.required:
            try:
                self._invoker(head)
            except AgentcellError as exc:
                self._telemetry.error(exc.code)
                return domain_error(exc, head.request_id)
        lease = pin.lease
        if lease.function.config is not pin.config:
            return None
        if pin.key is None:
            return self._reuse_free(pin)
        if not self._scheduler.still_warm(lease, pin.key):
            return None
        return pin.again(self._scheduler.acquire)

    def _reuse_free(self, pin: WarmPin) -> Forward | None:
        """A stateless pin (`affinity: none`): the instance is picked again as `route_free` picks
        it (the least busy with room), so a pinned connection spreads as the others do. The
        pinned Forward serves when the pick is its instance; another pick is given back, and the
        full route makes the request's Forward (and a new pin)."""
        lease = self._scheduler.route_free(pin.lease.function.name)
        if lease is None:
            return None
        if lease.instance is not pin.lease.instance:
            self._scheduler.release(lease)
            return None
        return pin.first  # (its lease names the same function and instance, and no session)

    async def route(self, head: RequestHead) -> Route:
        resolved = self._resolve(head)
        if not isinstance(resolved, tuple):
            return resolved
        target, affinity, key = resolved
        started = self._telemetry.begin_request(head, target.name)
        try:
            if affinity.kind == "mcp" and key is None:
                return await self._route_mcp_unnamed(head, target, affinity)
            lease = await self._scheduler.route(target.name, key)
        except AgentcellError as exc:
            self._telemetry.error(exc.code)
            return domain_error(exc, head.request_id)
        first_byte = self._telemetry.first_byte(started)
        return self._forward(lease, affinity, target, head, on_response_head=first_byte)

    async def _route_mcp_unnamed(
        self, head: RequestHead, target: FunctionTarget, affinity: Affinity
    ) -> Route:
        """An MCP request with no session id: a modern-era one goes anywhere; a handshake-era one
        (initialize, or a legacy SSE stream) opens a session the instance then names, if it
        succeeds (`mcp.SessionNaming`); else the session is given back when the request ends."""
        if mcp.is_stateless(head):
            lease = await self._scheduler.route_stateless(target.name)
            on_complete = partial(self._complete_unnamed, lease, False)  # gives the instance back
            return self._forward(lease, affinity, target, head, on_complete=on_complete)
        lease = await self._scheduler.route_new_mcp_session(target.name)
        sse_stream = head.method == b"GET"
        naming = mcp.SessionNaming(head.method, partial(self._scheduler.name_mcp_session, lease))
        return self._forward(
            lease,
            affinity,
            target,
            head,
            on_response_head=naming.on_response_head,
            body_filter=mcp.EndpointRewriter(target.mount, naming.from_endpoint) if sse_stream else None,
            on_complete=partial(self._complete_unnamed, lease, sse_stream),
        )

    def _forward(
        self,
        lease: Lease,
        affinity: Affinity,
        target: FunctionTarget,
        head: RequestHead,
        *,
        on_response_head: Callable[[int, Sequence[tuple[bytes, bytes]]], None] | None = None,
        body_filter: Callable[[bytes], bytes] | None = None,
        on_complete: CompletionCallback | None = None,
    ) -> Forward:
        if on_complete is None:
            mcp_session = affinity.kind == "mcp" and lease.session is not None
            complete = self._complete_mcp if mcp_session else self._complete
            on_complete = partial(complete, lease, head.method)
        session = lease.session
        context = {
            "function": target.name,
            "instance": lease.instance.id,
            "session": session.id if session else None,
        }
        on_complete = self._telemetry.traced(on_complete, context, head)
        return Forward(
            upstream=SocketUpstream(lease.instance.id, partial(self._connect, lease)),
            rewrite_path=target.path,
            add_response_headers=self._issued_key_headers(affinity, lease, target),
            drop_headers=target.drop,
            on_complete=on_complete,
            on_response_head=on_response_head,
            body_filter=body_filter,
            context=context,
            timeout_s=lease.function.config.request_timeout_s,
            explain_loss=partial(_stopped_or_none, lease),
        )

    @staticmethod
    def _issued_key_headers(
        affinity: Affinity, lease: Lease, target: FunctionTarget
    ) -> list[tuple[bytes, bytes]]:
        if lease.issued_key is None:
            return []
        key = lease.issued_key.encode()
        if affinity.kind == "cookie":
            path = target.mount or b"/"
            return [
                (
                    b"set-cookie",
                    b"%s=%s; Path=%s; HttpOnly; SameSite=Lax" % (affinity.cookie.encode(), key, path),
                )
            ]
        return [(_key_header(affinity), key)]

    async def _connect(self, lease: Lease) -> socket.socket:
        try:
            return await self._scheduler.connect(lease)
        except (OSError, NotFound, NotRunning) as exc:  # the instance's init may be gone already
            if not lease.instance.is_live:  # stopped on purpose while the request was on its way
                raise UpstreamGone(_stopped_under(lease)) from exc
            if not isinstance(exc, (ConnectionRefusedError, ConnectionResetError)):
                raise
            self._scheduler.instance_unreachable(lease, str(exc))
            ended = f"; its session {lease.session.id} ended" if lease.session is not None else ""
            raise UpstreamGone(
                f"instance {lease.instance.id} failed: it no longer accepts connections{ended} "
                "(instance_failed). Send the request again to start on a new instance."
            ) from exc

    def _complete(
        self, lease: Lease, method: bytes, status: int, bytes_in: int, bytes_out: int, duration_s: float
    ) -> None:
        self._scheduler.release(lease)
        self._telemetry.request_done(lease.function.name, status, duration_s)

    def _complete_mcp(
        self, lease: Lease, method: bytes, status: int, bytes_in: int, bytes_out: int, duration_s: float
    ) -> None:
        """A request of a named MCP session: DELETE 2xx ends it, and so does a 404 (the instance
        no longer knows it)."""
        self._scheduler.release(lease)
        self._telemetry.request_done(lease.function.name, status, duration_s)
        if (method == b"DELETE" and 200 <= status < 300) or status == 404:
            self._scheduler.end_mcp_session(lease)

    def _complete_unnamed(
        self, lease: Lease, sse_stream: bool, status: int, bytes_in: int, bytes_out: int, duration_s: float
    ) -> None:
        self._scheduler.release(lease)
        self._telemetry.request_done(lease.function.name, status, duration_s)
        if sse_stream and lease.session is not None and not lease.session.unnamed:
            self._scheduler.end_mcp_session(lease)  # a legacy SSE session lives as long as its stream
        else:
            self._scheduler.release_unnamed(lease)


class WarmPin:
    """One warm route and the inputs it was decided from: the method, the function the path names,
    and the headers `_resolve` reads (Host, the affinity's key header, Cookie, and the two that may
    carry an API key). A later request on the same client connection with the same inputs is
    routed by `GatewayRouter.reuse_warm`, which skips parsing the function target and the session
    key and making a Forward: the bulk of a warm request's routing. One Forward serves each such
    request (a copy when its path differs): its lease (function, instance, session) is the one
    `route_warm` would make, taken by `on_routed` and given back by `on_complete`. A stateless
    function's pin (`key` None) keeps only the routing: each request's instance is picked by
    `route_free`, and the first Forward serves again while the pick is its instance."""

    __slots__ = (
        "_again",
        "_router",
        "config",
        "first",
        "index",
        "inputs",
        "key",
        "key_header",
        "lease",
        "method",
        "mount",
        "path",
    )

    def __init__(
        self,
        router: GatewayRouter,
        head: RequestHead,
        target: FunctionTarget,
        key_header: bytes,
        key: str | None,
        lease: Lease,
        first: Forward,
    ) -> None:
        self._router = router
        self.method = head.method
        self.path = head.raw_path
        self.mount = target.mount
        self.index = head.index  # (shared by requests with the same headers: see header_index)
        self.inputs: tuple[bytes | None, ...] | None = None  # the index's routing inputs, when asked
        self.key_header = key_header
        self.key = key
        """None: a stateless function's (`affinity: none`), whose instance is picked per request"""
        self.lease = lease
        self.config = lease.function.config
        self.first = first
        self._again: Forward | None = None

    def reuse(self, head: RequestHead) -> Route | None:
        """The pinned route for `head` if its routing inputs are the pinned ones, else None."""
        if head.method != self.method:  # (the completion callback is bound to it)
            return None
        index = head.index
        if index is not self.index:
            if self.inputs is None:
                self.inputs = _routing_inputs(self.index, self.key_header)
            if _routing_inputs(index, self.key_header) != self.inputs:
                return None
        path = head.raw_path
        if path == self.path:
            return self._router.reuse_warm(self, head)
        mount = self.mount  # (empty when the Host named the function: any path is its own)
        if mount and not (path.startswith(mount) and (len(path) == len(mount) or path[len(mount)] == 0x2F)):
            return None
        route = self._router.reuse_warm(self, head)
        return (
            replace(route, rewrite_path=path[len(mount) :] or b"/") if isinstance(route, Forward) else route
        )

    def again(self, acquire: Callable[[Lease], None]) -> Forward:
        """The pinned Forward for a later request: it leases the session once on its way."""
        if self._again is None:
            self._again = replace(self.first, on_routed=partial(acquire, self.lease), reuse=self.reuse)
        return self._again


def _routing_inputs(index: Mapping[bytes, bytes], key_header: bytes) -> tuple[bytes | None, ...]:
    get = index.get
    return (get(b"host"), get(key_header), get(b"cookie"), get(b"x-api-key"), get(b"authorization"))


def _stopped_or_none(lease: Lease) -> str | None:
    """Why a request lost its upstream, if its instance was stopped on purpose meanwhile (not
    live, and not failed)."""
    instance = lease.instance
    return None if instance.is_live or instance.failure is not None else _stopped_under(lease)


def _stopped_under(lease: Lease) -> str:
    """The 502 for a request whose instance was stopped while it was on its way (its session was
    ended, idled out or its function deleted), rather than one that failed."""
    session = lease.session
    why = (
        f"its session {session.id} ended"
        if session is not None and (session.has_ended or session.is_closing)
        else "it was stopped"
    )
    return (
        f"instance {lease.instance.id} stopped while this request was on its way: {why} "
        "(deleted, idled out, or its function deleted or redeployed). Send the request again: "
        "it starts a new session."
    )
