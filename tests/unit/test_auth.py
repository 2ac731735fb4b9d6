"""Auth logic: scopes, the scope a route needs, keys in headers, the key ring, quotas and the
per-tenant rate limit (a FakeClock)."""

from __future__ import annotations

import pytest

from agentcell.errors import PermissionDenied, QuotaExceeded, Unauthenticated
from agentcell.protocol.tenants import TenantQuotas
from agentcell.server.auth.access import RateLimiter, RequestAuth, key_from_headers, required_scope
from agentcell.server.auth.keys import KeyRing, key_hash, new_key
from agentcell.server.auth.names import qualify, split
from agentcell.server.auth.principal import Principal
from agentcell.server.auth.quotas import QuotaGuard
from agentcell.server.clock import FakeClock
from agentcell.server.meta.records import KeyRecord


def test_scopes_imply_reads_and_star_is_everything_but_admin() -> None:
    writer = Principal("acme", "k1", frozenset({"sandboxes:write"}))
    assert writer.allows("sandboxes:read") and writer.allows("sandboxes:write")
    assert not writer.allows("functions:read")
    star = Principal("acme", "k2", frozenset({"*"}))
    assert star.allows("invoke") and not star.allows("admin") and not star.is_admin
    with pytest.raises(PermissionDenied, match="functions:write"):
        writer.require("functions:write")


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/healthz", None),
        ("GET", "/openapi.json", None),
        ("POST", "/v1/sandboxes", "sandboxes:write"),
        ("GET", "/v1/sandboxes/sbx_1/files", "sandboxes:read"),
        ("POST", "/v1/functions/chat/sessions", "sessions:write"),
        ("PUT", "/v1/functions/chat", "functions:write"),
        ("GET", "/v1/functions", "functions:read"),
        ("DELETE", "/v1/sessions/ses_1", "sessions:write"),
        ("GET", "/v1/usage", "usage:read"),
        ("POST", "/v1/tenants", "admin"),
        ("GET", "/v1/tenantsX", "sandboxes:read"),  # a prefix match is a whole path segment
        ("POST", "/mcp", "sandboxes:write"),
    ],
)
def test_each_route_needs_its_scope(method: str, path: str, scope: str | None) -> None:
    assert required_scope(method, path) == scope


def test_keys_come_from_either_header() -> None:
    assert key_from_headers("ac_a_b", None) == "ac_a_b"
    assert key_from_headers(None, "Bearer ac_a_b") == "ac_a_b"
    assert key_from_headers(None, "bearer  ac_a_b ") == "ac_a_b"
    assert key_from_headers(None, "Basic dXNlcg==") is None


def test_the_ring_finds_keys_by_hash_and_forgets_revoked_ones() -> None:
    key_id, key = new_key()
    ring = KeyRing()
    ring.add(KeyRecord(key_id, "acme", key_hash(key), "invoke", "", 0.0))
    principal = ring.principal(key)
    assert principal is not None and principal.tenant == "acme" and principal.key_id == key_id
    assert ring.principal(key + "x") is None and ring.principal("not-a-key") is None
    ring.remove(key_id)
    assert ring.principal(key) is None
    ring.add(KeyRecord("old", "acme", key_hash("ac_old_x"), "*", "", 0.0, revoked_at=1.0))
    assert ring.principal("ac_old_x") is None


def test_request_auth_checks_key_scope_and_rate() -> None:
    key_id, key = new_key()
    ring = KeyRing()
    ring.add(KeyRecord(key_id, "acme", key_hash(key), "sandboxes:read", "", 0.0))
    clock = FakeClock()
    auth = RequestAuth(ring, RateLimiter(clock, lambda _: 2.0), required=True)
    with pytest.raises(Unauthenticated):
        auth.check(None, None, "sandboxes:read")
    with pytest.raises(PermissionDenied):
        auth.check(key, None, "sandboxes:write")
    auth.check(key, None, "sandboxes:read")
    auth.check(key, None, "sandboxes:read")
    with pytest.raises(QuotaExceeded) as limited:
        auth.check(key, None, "sandboxes:read")
    assert limited.value.retry_after_s == 1
    clock.advance(0.5)
    auth.check(key, None, "sandboxes:read")  # refilled at 2 per second
    off = RequestAuth(ring, RateLimiter(clock, lambda _: None), required=False)
    assert off.check(None, None, "admin").is_admin


def test_the_quota_guard_counts_and_refuses_clearly() -> None:
    guard = QuotaGuard(lambda _: TenantQuotas(max_sandboxes=2, max_cpu=1.5, max_memory_mb=1024))
    guard.hold("acme", "sandbox", 1.0, 512)
    with pytest.raises(QuotaExceeded, match="cores"):
        guard.hold("acme", "sandbox", 1.0, 256)
    guard.hold("acme", "sandbox", 0.5, 512)
    with pytest.raises(QuotaExceeded, match="quota of 2 sandboxes"):
        guard.hold("acme", "sandbox")
    guard.release("acme", "sandbox", 0.5, 512)
    assert (guard.held("acme").sandbox, guard.held("acme").cpu) == (1, 1.0)
    guard.hold("acme", "sandbox", 5.0, 9999, force=True)  # what a restart finds is counted anyway
    assert guard.held("other").sandbox == 0


def test_names_are_qualified_outside_the_default_tenant() -> None:
    assert qualify("default", "chat") == "chat" and split("chat") == ("default", "chat")
    assert qualify("acme", "chat") == "acme.chat" and split("acme.chat") == ("acme", "chat")


@pytest.mark.parametrize(("rate", "period_s"), [(0.5, 2), (0.01, 100)])
def test_a_rate_below_one_per_second_allows_one_request_per_period(rate: float, period_s: int) -> None:
    """max_rps 0.5 is one request every 2 s (the bucket holds one whole token), not a lock-out."""
    clock = FakeClock()
    limiter = RateLimiter(clock, lambda _: rate)
    limiter.take("acme")  # a fresh bucket holds one whole token
    with pytest.raises(QuotaExceeded) as limited:
        limiter.take("acme")
    assert limited.value.retry_after_s == period_s
    clock.advance(period_s * 0.9)
    with pytest.raises(QuotaExceeded):
        limiter.take("acme")
    clock.advance(period_s * 0.1)
    limiter.take("acme")  # as retry-after said
    for _ in range(3):  # spaced further apart than the period: every one goes through
        clock.advance(period_s * 1.5)
        limiter.take("acme")
    with pytest.raises(QuotaExceeded):  # and no more than one token is ever saved up
        limiter.take("acme")
