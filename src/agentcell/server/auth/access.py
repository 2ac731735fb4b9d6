"""Which scope a control-plane request needs, the key a request carries, and a per-tenant rate
limit. Pure decisions; the edges (the control plane's middleware, the gateway) act on them."""

from __future__ import annotations

import math
from collections.abc import Callable

from agentcell.errors import QuotaExceeded, Unauthenticated
from agentcell.server.auth.keys import KeyRing
from agentcell.server.auth.principal import LOCAL, Principal
from agentcell.server.clock import Clock
from agentcell.server.token_bucket import TokenBucket

PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
# (path prefix, scope to read, scope to write), first match wins.
RULES: tuple[tuple[str, str, str], ...] = (
    ("/v1/tenants", "admin", "admin"),
    ("/v1/keys", "admin", "admin"),
    ("/v1/audit", "admin", "admin"),
    ("/metrics", "metrics:read", "metrics:read"),
    ("/v1/usage", "usage:read", "usage:read"),
    ("/v1/templates", "sandboxes:read", "admin"),
    ("/v1/sessions", "sessions:read", "sessions:write"),
    ("/v1/workspaces", "sessions:read", "sessions:write"),
    ("/v1/functions/", "functions:read", "functions:write"),  # (…/sessions: see required_scope)
    ("/v1/functions", "functions:read", "functions:write"),
    ("/v1/sandboxes", "sandboxes:read", "sandboxes:write"),
    ("/v1/snapshots", "sandboxes:read", "sandboxes:write"),
    ("/mcp", "sandboxes:write", "sandboxes:write"),
)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
E2B_IN_SANDBOX = (
    "/e2b/process.Process/",
    "/e2b/filesystem.Filesystem/",
    "/e2b/files",
    "/e2b/health",
    "/e2b/execute",
    "/e2b/contexts",
    "/e2b/_sandbox/",
    "/e2b/_signed/",
)
"""E2B's in-sandbox protocol (envd, code interpreter): the SDK sends no API key there; the E2B
mount (server/e2b) checks the sandbox's own access token instead."""
FALLBACK = "sandboxes:write"
MAX_RETRY_AFTER_S = 3600  # everything else (the E2B-compatible API) drives sandboxes


def required_scope(method: str, path: str) -> str | None:
    """None for public paths."""
    if path in PUBLIC_PATHS or path.startswith(E2B_IN_SANDBOX):
        return None
    read = method in READ_METHODS
    if _is_function_sessions(path):
        return "sessions:read" if read else "sessions:write"
    for prefix, read_scope, write_scope in RULES:
        if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
            return read_scope if read else write_scope
    return "sandboxes:read" if read else FALLBACK


def _is_function_sessions(path: str) -> bool:
    """`/v1/functions/{name}/sessions[/…]`: the segment after the name, not `/sessions` anywhere
    (a function may be named `sessions-bot`, and deploying it needs functions:write)."""
    segments = path.split("/")
    return path.startswith("/v1/functions/") and len(segments) > 4 and segments[4] == "sessions"


def key_from_headers(x_api_key: str | None, authorization: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


class RateLimiter:
    """A token bucket per tenant, `rate(tenant)` requests per second (None: unlimited), with
    one second of burst, and never less than one request of it: below 1 per second (0.5) the
    bucket holds one whole token, refilled every 1/rate seconds (one request per 2 s)."""

    def __init__(self, clock: Clock, rate: Callable[[str], float | None]) -> None:
        self._clock = clock
        self._rate = rate
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, tenant: str) -> None:
        rate = self._rate(tenant)
        if rate is None:
            return
        now = self._clock.now()
        burst = max(1.0, rate)  # a bucket smaller than one token would refuse every request
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = TokenBucket(burst, now)
        if not bucket.take(now, rate, burst):
            wait = min(MAX_RETRY_AFTER_S, math.ceil((1 - bucket.tokens) / rate))
            raise QuotaExceeded(
                f"tenant {tenant} is over its {rate:g} requests per second", retry_after_s=wait
            )


class RequestAuth:
    """Who a request is, from its key, checked for `scope` and the tenant's rate. Shared by the
    control plane and the gateway; with `required` off, everyone is the default tenant's admin."""

    def __init__(self, ring: KeyRing, limiter: RateLimiter, *, required: bool) -> None:
        self._ring = ring
        self._limiter = limiter
        self.required = required

    def check(self, x_api_key: str | None, authorization: str | None, scope: str) -> Principal:
        principal = self.identify(x_api_key, authorization)
        self.authorize(principal, scope)
        return principal

    def identify(self, x_api_key: str | None, authorization: str | None) -> Principal:
        """Whose key the request carries, or Unauthenticated (none, unknown or revoked)."""
        if not self.required:
            return LOCAL
        key = key_from_headers(x_api_key, authorization)
        if key is None:
            raise Unauthenticated("this request needs an API key: send X-API-Key or Authorization: Bearer")
        principal = self._ring.principal(key)
        if principal is None:
            raise Unauthenticated("this API key is not valid (unknown or revoked)")
        return principal

    def authorize(self, principal: Principal, scope: str) -> None:
        """PermissionDenied unless the key holds `scope`; QuotaExceeded past its tenant's rate."""
        if not self.required:
            return
        principal.require(scope)
        self._limiter.take(principal.tenant)
