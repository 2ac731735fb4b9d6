"""GET /metrics (Prometheus text), GET /v1/audit (the audit log), the middleware that writes the
audit log, and the gauges read from the scheduler's in-memory state at scrape time."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.routing import RouteContext, iter_route_contexts
from fastapi.telemetry import TelemetryConfig
from pydantic import BaseModel, Field
from starlette.routing import Match, Mount, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentcell.errors import NotFound
from agentcell.server.api.errors import request_id_var
from agentcell.server.meta.records import AuditRecord
from agentcell.server.observability.audit import (
    MAX_LIMIT,
    MUTATING_METHODS,
    NO_ROUTE,
    Actor,
    AuditLog,
    AuditQuery,
    describe_target,
)
from agentcell.server.observability.registry import CONTENT_TYPE, Registry
from agentcell.server.observability.telemetry import Telemetry
from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.scheduler import Scheduler

router = APIRouter(tags=["observability"])

FASTAPI_TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
"""For every FastAPI app of the server: requests are traced by agentcell itself (the gateway's
spans, observability/tracing.py). Left on, FastAPI's own OpenTelemetry bridge asks the global
providers on every request whether they are configured (~6% of a small GET's cost) and would add a
second span per request wherever an application configures a global provider."""

ActorOf = Callable[[Scope], Actor]


def local_actor(scope: Scope) -> Actor:
    """Until API keys land every request acts as `local` in the default tenant."""
    return Actor()


# -- /metrics ----------------------------------------------------------------------------------------


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(request: Request) -> Response:
    """Every metric family in the Prometheus text format (404 with AGENTCELL_METRICS=false). They
    cover every tenant, so the scope it needs, metrics:read, is the operator's (Principal)."""
    if not request.app.state.metrics_enabled:
        raise NotFound("metrics are off on this server (AGENTCELL_METRICS=false)")
    telemetry: Telemetry = request.app.state.telemetry
    return Response(telemetry.registry.exposition(), media_type=CONTENT_TYPE)


def _counted(values: Iterable[str]) -> list[tuple[tuple[str, ...], float]]:
    return [((k,), float(n)) for k, n in sorted(Counter(values).items())]


def add_state_gauges(registry: Registry, scheduler: Scheduler, sandboxes: SandboxPauses) -> None:
    """Gauges counted from live state when scraped, so the hot path never updates them."""
    registry.gauge(
        "agentcell_sessions",
        "Live sessions, by state",
        ("state",),
        lambda: _counted(s.state for s in scheduler.sessions(None, None, {})),
    )
    registry.gauge(
        "agentcell_instances",
        "Function instances, by state",
        ("state",),
        lambda: _counted(i.state for f in scheduler.functions() for i in f.instances.values()),
    )
    registry.gauge(
        "agentcell_warm_pool_instances",
        "Spare instances waiting for a session, by function",
        ("function",),
        lambda: [((f.name,), float(len(f.warm))) for f in scheduler.functions()],
    )
    registry.gauge(
        "agentcell_sandboxes",
        "Sandboxes, by state",
        ("state",),
        lambda: _counted(sandboxes.all_states()),  # every tenant's, like the gauges above
    )


# -- /v1/audit ---------------------------------------------------------------------------------------


class AuditEntry(BaseModel):
    at: datetime
    actor: str
    tenant: str
    action: str = Field(description="method and route, e.g. `POST /v1/sandboxes/{sandbox_id}/commands`")
    target: str = Field(description="the route's path parameters, then `id=…` of what a 201 created")
    status: int
    request_id: str
    method: str
    path: str

    @classmethod
    def of(cls, record: AuditRecord) -> AuditEntry:
        return cls(
            at=datetime.fromtimestamp(record.at, UTC),
            actor=record.actor,
            tenant=record.tenant,
            action=record.action,
            target=record.target,
            status=record.status,
            request_id=record.request_id,
            method=record.method,
            path=record.path,
        )


class AuditList(BaseModel):
    entries: list[AuditEntry]


FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


@router.get("/v1/audit", response_model=AuditList, tags=["audit"])
async def list_audit(
    request: Request,
    since: Annotated[datetime, Query(description="from this time (ISO 8601 or epoch seconds)")] = datetime(
        1970, 1, 1, tzinfo=UTC
    ),
    until: Annotated[datetime, Query(description="before this time")] = FAR_FUTURE,
    action: Annotated[str | None, Query(max_length=300)] = None,
    tenant: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> AuditList:
    """Control-plane actions, oldest first."""
    audit: AuditLog = request.app.state.audit
    query = AuditQuery(_epoch(since), _epoch(until), action=action, tenant=tenant, limit=limit)
    return AuditList(entries=[AuditEntry.of(r) for r in await audit.query(query)])


def _epoch(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# -- the audit middleware ----------------------------------------------------------------------------


MAX_CREATED_BODY = 64 << 10


def created_id(body: bytes) -> str:
    """`id=<id>` of what a 201 answer created (our own JSON, read from its first body chunk), or
    "" when it names none."""
    if not body.startswith(b"{") or len(body) > MAX_CREATED_BODY:
        return ""
    try:
        value = json.loads(body).get("id")
    except ValueError:
        return ""
    return f"id={value}" if isinstance(value, str) else ""


def asked_route(routes: Sequence[RouteContext], scope: Scope) -> tuple[str, Mapping[str, object]]:
    """The template and path parameters of the route the router would give a request that was
    answered before it reached the router (refused for its key, its body too large): a full
    match first, else one of another method, as the router picks; NO_ROUTE when none matches.
    A mount's inner routes are not looked into."""
    probe = dict(scope)  # matching may leave the router's own keys behind
    partial: tuple[str, Mapping[str, object]] | None = None
    for context in routes:
        if isinstance(context.route, Mount) or not context.path:
            continue
        match, child = context.matches(probe)
        if match is Match.FULL:
            return context.path, child.get("path_params") or {}
        if match is Match.PARTIAL and partial is None:
            partial = (context.path, child.get("path_params") or {})
    return partial or (NO_ROUTE, {})


class AuditMiddleware:
    """Appends one audit entry per mutating request (POST/PUT/PATCH/DELETE) once it is answered:
    who (`actor_of(scope)`), the route, its path parameters (and the id a 201 answer names),
    the status, the request id. It reads neither the request body nor the query string. A request
    answered before routing is named by the route `router` would have given it."""

    def __init__(
        self, app: ASGIApp, audit: AuditLog, actor_of: ActorOf = local_actor, router: Router | None = None
    ) -> None:
        self.app = app
        self._audit = audit
        self._actor_of = actor_of
        self._router = router
        self._routes: list[RouteContext] | None = None  # read at the first use: all are added by then

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING_METHODS:
            await self.app(scope, receive, send)
            return
        at = self._audit.now()
        status, created = 500, ""

        async def send_status(message: Message) -> None:
            nonlocal status, created
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status == 201 and not created and message["type"] == "http.response.body":
                created = created_id(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._audit.append(self._record(scope, at, status, created))

    def _record(self, scope: Scope, at: float, status: int, created: str) -> AuditRecord:
        who = self._actor_of(scope)
        template, params = self._route_of(scope)
        target = describe_target(params)
        return AuditRecord(
            at=at,
            actor=who.actor,
            tenant=who.tenant,
            action=f"{scope['method']} {template}",
            target=",".join(t for t in (target, created) if t),
            status=status,
            request_id=request_id_var.get(),
            method=scope["method"],
            path=str(scope.get("path", ""))[:1000],
        )

    def _route_of(self, scope: Scope) -> tuple[str, Mapping[str, object]]:
        if "router" in scope or self._router is None:  # the router saw it: its route, if any
            template = getattr(scope.get("route"), "path", None) or NO_ROUTE
            return template, scope.get("path_params") or {}
        if self._routes is None:
            self._routes = list(iter_route_contexts(self._router.routes))
        return asked_route(self._routes, scope)


def install_observability(
    app: FastAPI,
    telemetry: Telemetry,
    audit: AuditLog,
    *,
    metrics_enabled: bool,
    actor_of: ActorOf = local_actor,
) -> None:
    """Routes, gauges and the audit middleware (added before the request-id middleware, so it runs
    inside it and sees the request's id)."""
    app.state.telemetry = telemetry
    app.state.audit = audit
    app.state.metrics_enabled = metrics_enabled
    if metrics_enabled:
        add_state_gauges(telemetry.registry, app.state.scheduler, app.state.pauses)
    app.include_router(router)
    app.add_middleware(AuditMiddleware, audit=audit, actor_of=actor_of, router=app.router)
