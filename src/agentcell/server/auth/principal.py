"""The principal of a request: the tenant and scopes of the API key it carried.

Set once per request at the edge (the control plane's middleware, the gateway's router) in a
context variable; services read the tenant from there, so a lookup by id can never cross tenants.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from agentcell.errors import PermissionDenied, Unauthenticated
from agentcell.server.auth.names import DEFAULT_TENANT

ALL_SCOPES = "*"
SERVER_WIDE_SCOPES = {
    "admin": "it acts on every tenant: only keys of the default tenant may hold it",
    "metrics:read": (
        "/metrics shows every tenant's functions and traffic: it needs an admin key or a key of "
        "the default tenant that names metrics:read (a tenant's own figures are at /v1/usage)"
    ),
}
"""Scopes over every tenant, with why a key is refused them: `*` is none of them, and only keys
of the default tenant (the operator's) hold them."""


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_id: str
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        """Over every tenant: only keys of the default tenant can hold `admin`."""
        return "admin" in self.scopes

    def allows(self, scope: str) -> bool:
        """A write scope implies its read scope; "*" is every scope but the server-wide ones,
        which a key of another tenant than the default one never holds; admin is all."""
        if self.is_admin:
            return True
        if scope in SERVER_WIDE_SCOPES:
            return scope in self.scopes and self.tenant == DEFAULT_TENANT
        if scope in self.scopes or ALL_SCOPES in self.scopes:
            return True
        return scope.endswith(":read") and scope.removesuffix(":read") + ":write" in self.scopes

    def require(self, scope: str) -> None:
        if not self.allows(scope):
            why = SERVER_WIDE_SCOPES.get(scope)
            raise PermissionDenied(
                f"this API key (id {self.key_id}) lacks the scope {scope!r}" + (f": {why}" if why else "")
            )


LOCAL = Principal("default", "local", frozenset({ALL_SCOPES, "admin"}))
"""everyone, when the server runs without API keys (AGENTCELL_AUTH=off)"""

_current: ContextVar[Principal | None] = ContextVar("agentcell_principal", default=None)


def current() -> Principal:
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("no API key: send it as X-API-Key or Authorization: Bearer")
    return principal


def current_tenant() -> str:
    return current().tenant


def current_or_none() -> Principal | None:
    """The request's principal; None in the server's own background work."""
    return _current.get()


@contextlib.contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    """`principal` is current inside the block (and in the tasks started from it); None: the
    server's own view of every tenant (for requests authorized otherwise, such as E2B's
    in-sandbox calls, which carry their sandbox's access token)."""
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)
