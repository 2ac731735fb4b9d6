"""GatewayRouter: the scheduler behind the HTTP engine. `/fn/{name}/…` (or `Host: {name}.{domain}`)
goes to the session's instance; every other request goes to the control plane.

The warm path is: parse keys (pure), `Scheduler.route` (in-memory), build a Forward. No database,
no thread pool.
"""

from __future__ import annotations

import json
import logging
import socket
from functools import partial

from agentcell.errors import AgentcellError
from agentcell.protocol.common import STATUS_BY_CODE
from agentcell.protocol.functions import Affinity
from agentcell.server.gateway.keys import MCP_SESSION_HEADER, FunctionTarget, function_target, session_key
from agentcell.server.gateway.route import (
    Forward,
    RequestHead,
    Respond,
    Route,
    SocketUpstream,
    UpstreamAddress,
)
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


def _key_header(affinity: Affinity) -> bytes:
    return MCP_SESSION_HEADER if affinity.kind == "mcp" else affinity.header.encode()


class GatewayRouter:
    def __init__(self, scheduler: Scheduler, control: UpstreamAddress, domain: str | None = None) -> None:
        self._scheduler = scheduler
        self._control = control
        self._domain = domain.lower().encode() if domain else None

    def _resolve(self, head: RequestHead) -> tuple[FunctionTarget, Affinity, str | None] | Route:
        """Which function and session key a request names — or the answer when that settles it."""
        target = function_target(head.raw_path, head.header(b"host"), self._domain)
        if target is None:
            return Forward(self._control)
        try:
            affinity = self._scheduler.function(target.name).config.affinity
            key = session_key(affinity, head.header(_key_header(affinity)), head.header(b"cookie"))
        except AgentcellError as exc:
            return domain_error(exc, head.request_id)
        return target, affinity, key

    def route_nowait(self, head: RequestHead) -> Route | None:
        """The warm path: a bound session on a ready instance, answered with no task or await."""
        resolved = self._resolve(head)
        if not isinstance(resolved, tuple):
            return resolved
        target, affinity, key = resolved
        lease = self._scheduler.route_warm(target.name, key)
        return None if lease is None else self._forward(lease, affinity, target)

    async def route(self, head: RequestHead) -> Route:
        resolved = self._resolve(head)
        if not isinstance(resolved, tuple):
            return resolved
        target, affinity, key = resolved
        try:
            lease = await self._scheduler.route(target.name, key)
        except AgentcellError as exc:
            return domain_error(exc, head.request_id)
        return self._forward(lease, affinity, target)

    def _forward(self, lease: Lease, affinity: Affinity, target: FunctionTarget) -> Forward:
        session = lease.session
        context = {
            "function": target.name,
            "instance": lease.instance.id,
            "session": session.id if session else None,
        }
        return Forward(
            upstream=SocketUpstream(lease.instance.id, partial(self._connect, lease)),
            rewrite_path=target.path,
            add_response_headers=self._issued_key_headers(affinity, lease, target),
            on_complete=partial(self._complete, lease),
            context=context,
            timeout_s=lease.function.config.request_timeout_s,
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
        except (ConnectionRefusedError, ConnectionResetError) as exc:
            self._scheduler.instance_unreachable(lease, str(exc))
            raise

    def _complete(self, lease: Lease, status: int, bytes_in: int, bytes_out: int, duration_s: float) -> None:
        self._scheduler.release(lease)
