"""The control plane's authentication: every request but the public ones carries an API key
(X-API-Key or Authorization: Bearer); its principal is current for the request's handling. With
AGENTCELL_AUTH=off every request acts as the default tenant's administrator."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from agentcell.errors import AgentcellError
from agentcell.server.api.errors import error_response
from agentcell.server.auth.access import RequestAuth, required_scope
from agentcell.server.auth.principal import LOCAL, Principal, acting_as
from agentcell.server.observability.audit import ANONYMOUS_ACTOR, NO_TENANT, Actor
from agentcell.server.observability.logs import bind as bind_log_ids

PRINCIPAL_STATE = "agentcell_principal"
ANONYMOUS = Actor(actor=ANONYMOUS_ACTOR, tenant=NO_TENANT)


class AuthMiddleware:
    def __init__(self, app: ASGIApp, auth: RequestAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope.get("method", "GET"), scope["path"])
        if needed is None:
            with acting_as(LOCAL):
                await self.app(scope, receive, send)
            return
        x_api_key, authorization = _key_headers(scope)
        # For the audit log, outside, refused or not: None until the key is known (anonymous).
        state = scope.setdefault("state", {})
        state[PRINCIPAL_STATE] = None
        try:
            principal = self.auth.identify(x_api_key, authorization)
            state[PRINCIPAL_STATE] = principal
            self.auth.authorize(principal, needed)
        except AgentcellError as exc:
            retry = getattr(exc, "retry_after_s", None)
            extra = {"retry-after": str(retry)} if retry else None
            await error_response(exc.code, exc.message, extra)(scope, receive, send)
            return
        bind_log_ids(tenant=principal.tenant)  # this request's log lines carry its tenant
        with acting_as(principal):
            await self.app(scope, receive, send)


def _key_headers(scope: Scope) -> tuple[str | None, str | None]:
    """The two headers a key may come in (ASGI names are lowercase bytes)."""
    found: dict[bytes, str] = {}
    for name, value in scope.get("headers", []):
        if name in (b"x-api-key", b"authorization"):
            found[name] = value.decode("latin-1")
    return found.get(b"x-api-key"), found.get(b"authorization")


def audited_actor(scope: Scope) -> Actor:
    """Who the audit log names for a request: its key's id and tenant, also when that key was
    refused for its scope or its tenant's rate; `anonymous` in no tenant when the request had no
    valid key; `local` in the default tenant on public paths and without keys."""
    state = scope.get("state", {})
    if PRINCIPAL_STATE not in state:
        return Actor()
    principal = state[PRINCIPAL_STATE]
    if principal is None:
        return ANONYMOUS
    if not isinstance(principal, Principal) or principal is LOCAL:
        return Actor()
    return Actor(actor=principal.key_id, tenant=principal.tenant)
