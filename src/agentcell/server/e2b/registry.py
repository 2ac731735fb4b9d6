"""E2bRegistry: what the E2B API adds to agentcell's sandboxes — template names as the client gave
them, envd access tokens, process tags and directory watchers, and which sandboxes' ports are private.

envd access tokens are derived (HMAC of the sandbox id under a per-server secret of their own;
traffic tokens likewise, under PrivateTraffic's), so every sandbox has them without any state, and
a signed file URL can be matched to its sandbox by trying each live one. Per-sandbox extras live
here until their sandbox is gone (dropped lazily on lookup and on create). A private sandbox stays
private while it is paused (its request says so, in its paused record across a server restart),
and this registry makes it private again on every resume, whoever asks for it
(SandboxPauses.resuming).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentcell.errors import NotFound
from agentcell.server.clock import Clock
from agentcell.server.e2b.target import ACCESS_TOKEN_HEADER, TRAFFIC_TOKEN_HEADER
from agentcell.server.scheduler.sandbox_metrics import SandboxMetrics
from agentcell.server.scheduler.sandbox_pause import PausedSandbox, SandboxPauses
from agentcell.server.scheduler.sandboxes import Sandbox, SandboxService
from agentcell.server.scheduler.traffic import TOKEN_CHARS

if TYPE_CHECKING:
    from agentcell.server.e2b.process import ProcessConfig
    from agentcell.server.e2b.watch import Watcher

TEMPLATE_ALIASES = {"code-interpreter-v1": "base", "code-interpreter": "base", "base": "base"}
"""E2B's public template names → ours. Our base has python3 with numpy, pandas and matplotlib, node,
and the code kernels, which is what `code-interpreter-v1` promises."""


def our_template(e2b_template: str) -> str:
    return TEMPLATE_ALIASES.get(e2b_template, e2b_template)


@dataclass(slots=True)
class Extras:
    sandbox_id: str
    template_id: str
    tags: dict[str, str] = field(default_factory=dict)
    """process tag → our process id"""
    configs: dict[str, ProcessConfig] = field(default_factory=dict)
    """our process id → how envd's Start described it"""
    watchers: dict[str, Watcher] = field(default_factory=dict)


class SandboxGone(Exception):
    """The sandbox an envd request names does not exist (any more); the proxy's 502 answer."""

    def __init__(self, sandbox_id: str) -> None:
        super().__init__(f"The sandbox {sandbox_id} was not found")
        self.sandbox_id = sandbox_id


TEMPLATE_LABEL = "e2b_template"
"""the label a paused sandbox keeps its E2B template name under (see SandboxPauses.labeller)"""
PUBLIC_TRAFFIC_LABEL = "e2b_public_traffic"
"""`false` on a paused private sandbox. Its request's `ports` says so too, except for one paused
before `ports` existed (366ec23), or resumed from such a record: for those the label is the record."""


def _was_private(paused: PausedSandbox) -> bool:
    return paused.sandbox.request.ports == "private" or paused.labels.get(PUBLIC_TRAFFIC_LABEL) == "false"


class E2bRegistry:
    def __init__(
        self,
        sandboxes: SandboxService,
        clock: Clock,
        pauses: SandboxPauses,
        metrics: SandboxMetrics,
        envd_secret: bytes | None = None,
    ) -> None:
        """`envd_secret` derives the envd access tokens (a random one when not given)."""
        self.sandboxes = sandboxes
        self.pauses = pauses
        self.metrics = metrics
        self.clock = clock
        self._extras: dict[str, Extras] = {}
        self._envd_secret = envd_secret or secrets.token_bytes(32)
        self.traffic = sandboxes.traffic
        """the private sandboxes of every API (the native one's too): the gateway checks by it"""
        pauses.labeller = self._labels
        pauses.resuming = self._restrict_resumed

    def token(self, sandbox_id: str) -> str:
        """envdAccessToken: drives the sandbox's envd and code interpreter, and signs its file
        URLs. Not its trafficAccessToken (PrivateTraffic's), which only opens a private sandbox's
        ports: whoever is given that one to reach a web app must not run commands with it."""
        return hmac.new(self._envd_secret, sandbox_id.encode(), hashlib.sha256).hexdigest()[:TOKEN_CHARS]

    def is_token(self, sandbox_id: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(self.token(sandbox_id), given)

    def file_signature(
        self, sandbox_id: str, path: str, operation: str, user: str, expiration: str | None
    ) -> str:
        """E2B's v1 signature of a file URL: it lets whoever holds it `read` or `write` one path."""
        token = self.token(sandbox_id)
        raw = f"{path}:{operation}:{user}:{token}" + (f":{expiration}" if expiration else "")
        digest = hashlib.sha256(raw.encode()).digest()
        return "v1_" + base64.b64encode(digest).rstrip(b"=").decode()

    def signs(self, sandbox_id: str, query: Mapping[str, str], operation: str) -> bool:
        """Whether a /files URL's query carries a signature of the sandbox's for `operation`, not
        expired."""
        signature = query.get("signature")
        if signature is None:
            return False
        expiration = query.get("signature_expiration")
        path, user = query.get("path", ""), query.get("username", "")
        expected = self.file_signature(sandbox_id, path, operation, user, expiration)
        return hmac.compare_digest(expected, signature) and not self.expired(expiration)

    def expired(self, expiration: str | None) -> bool:
        return expiration is not None and (not expiration.isdigit() or int(expiration) < self.clock.now())

    def drives(self, sandbox_id: str, headers: dict[bytes, bytes]) -> bool:
        """Whether a call's headers carry the sandbox's envd access token, or its traffic access
        token (which the code interpreter's context calls carry alone)."""
        envd = headers.get(ACCESS_TOKEN_HEADER.encode())
        traffic = headers.get(TRAFFIC_TOKEN_HEADER.encode())
        return (envd is not None and self.is_token(sandbox_id, envd.decode("latin-1"))) or (
            traffic is not None and self.traffic.is_token(sandbox_id, traffic.decode("latin-1"))
        )

    def _restrict_resumed(self, paused: PausedSandbox) -> None:
        """SandboxPauses.resuming: a private sandbox is private again before it runs (after a
        server restart only its paused record knows), whichever API resumes it."""
        if _was_private(paused):
            self.traffic.restrict(paused.sandbox.id)

    def allows_public_traffic(self, sandbox: Sandbox) -> bool:
        """False for a private sandbox, live or paused."""
        if sandbox.request.ports == "private" or self.traffic.is_private(sandbox.id):
            return False
        paused = self.pauses.paused(sandbox.id)
        return paused is None or not _was_private(paused)

    def _labels(self, sandbox: Sandbox) -> dict[str, str]:
        """What a paused sandbox keeps (SandboxPauses.labeller)."""
        labels = {TEMPLATE_LABEL: self.template_id(sandbox)}
        if self.traffic.is_private(sandbox.id):
            labels[PUBLIC_TRAFFIC_LABEL] = "false"
        return labels

    def remember(self, sandbox: Sandbox, template_id: str) -> None:
        self.forget_ended()
        self._extras[sandbox.id] = Extras(sandbox.id, template_id)

    def extras(self, sandbox: Sandbox) -> Extras:
        found = self._extras.get(sandbox.id)
        if found is None:
            found = self._extras[sandbox.id] = Extras(sandbox.id, sandbox.request.template)
        return found

    def template_id(self, sandbox: Sandbox) -> str:
        found = self._extras.get(sandbox.id)
        if found is not None:
            return found.template_id
        paused = self.pauses.paused(sandbox.id)
        return (
            paused.labels.get(TEMPLATE_LABEL, sandbox.request.template)
            if paused
            else sandbox.request.template
        )

    def running(self, sandbox_id: str) -> Sandbox:
        """The running sandbox an envd request names, or SandboxGone."""
        try:
            sandbox = self.sandboxes.get(sandbox_id)
        except NotFound:
            self._drop(sandbox_id)
            raise SandboxGone(sandbox_id) from None
        if sandbox.state != "running":
            raise SandboxGone(sandbox_id)
        return sandbox

    def forget_ended(self) -> None:
        """Drop what is kept for sandboxes that have ended, of every tenant: the request that calls
        this sees its own tenant's sandboxes only, and another tenant's are not ended."""
        live = {sandbox.id for sandbox in self.sandboxes.all()}
        for sandbox_id in [s for s in self._extras if s not in live]:
            self._drop(sandbox_id)

    def _drop(self, sandbox_id: str) -> None:
        extras = self._extras.pop(sandbox_id, None)
        if extras is not None:
            for watcher in extras.watchers.values():
                watcher.close()

    def all_running(self) -> list[Sandbox]:
        return self.sandboxes.find({}, "running")
