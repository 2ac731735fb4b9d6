"""PrivateTraffic: which sandboxes keep their ports from the public, their traffic access tokens,
and the check the gateway makes for them.

A sandbox is private when it was created so (`"ports": "private"` on agentcell's API, E2B's
`network.allowPublicTraffic: false`; both are its request's `ports`). A request through a private
sandbox's host, `{port}-{sandboxId}.{domain}`, reaches a port only with the sandbox's token in the
`e2b-traffic-access-token` header; the gateway answers 403 otherwise (server/gateway/e2b.py). envd
(49983) and the code interpreter (49999) are not checked here, as on E2B: they take the sandbox's
envd access token themselves (e2b/registry.py), never this one.

Tokens are derived (HMAC of the sandbox id under the node's secret, kept in the state directory:
node_secrets.py), so a sandbox has the same one from its create through pauses, resumes and
server restarts. Private sandboxes live in memory only. SandboxService owns this and makes
a sandbox created private (every create, fork, snapshot start and resume goes through its
`create`) private here before its id or its ports can be reached; the E2B registry's resume hook
(SandboxPauses.resuming) also restricts a sandbox paused before `ports` existed, whose paused
record says so only by an E2B label.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable

TOKEN_CHARS = 40
PRUNE_FLOOR = 64
"""ended sandboxes are forgotten once this many are held, then whenever the count doubles"""


class PrivateTraffic:
    """Filled on create and resume of a private sandbox, read by the gateway on every request for
    a sandbox's port."""

    def __init__(self, exists: Callable[[str], bool], secret: bytes | None = None) -> None:
        """`exists`: whether a sandbox id is live or paused, for any tenant (ended private
        sandboxes are forgotten by it, lazily)."""
        self._exists = exists
        self._secret = secret or secrets.token_bytes(32)
        self._tokens: dict[str, bytes] = {}
        """private sandbox id → its traffic access token; a public sandbox has no entry"""
        self._prune_at = PRUNE_FLOOR

    def token(self, sandbox_id: str) -> str:
        """The sandbox's access token (private or not: E2B's envd takes it too)."""
        return hmac.new(self._secret, sandbox_id.encode(), hashlib.sha256).hexdigest()[:TOKEN_CHARS]

    def restrict(self, sandbox_id: str) -> str:
        """From now on its ports answer only requests that carry its token, which this returns."""
        token = self.token(sandbox_id)
        self._tokens[sandbox_id] = token.encode()
        if len(self._tokens) >= self._prune_at:
            self._forget_ended()
        return token

    def is_private(self, sandbox_id: str) -> bool:
        return sandbox_id in self._tokens

    def is_token(self, sandbox_id: str, given: str) -> bool:
        """Whether `given` is the sandbox's traffic access token (private or not)."""
        return hmac.compare_digest(self.token(sandbox_id), given)

    def admits(self, sandbox_id: str, given: bytes | None) -> bool:
        """Whether a request carrying `given` (the header's value, None when absent) may reach the
        sandbox's ports. On the gateway's hot path: one dict lookup, and for a private sandbox one
        constant-time compare (the token is not recomputed)."""
        expected = self._tokens.get(sandbox_id)
        return expected is None or (given is not None and hmac.compare_digest(expected, given))

    def _forget_ended(self) -> None:
        """Drop the sandboxes that no longer exist, live or paused (a paused one stays private for
        its resume); the next pruning waits until the count has doubled."""
        for sandbox_id in [s for s in self._tokens if not self._exists(s)]:
            del self._tokens[sandbox_id]
        self._prune_at = max(PRUNE_FLOOR, 2 * len(self._tokens))
