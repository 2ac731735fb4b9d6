"""E2B's sandbox hosts, `{port}-{sandboxId}.{domain}` (what `Sandbox.get_host(port)` returns): pure
parsing, and what the gateway needs from whoever can reach a sandbox's ports.

Requests for envd (49983) or the code interpreter (49999) go to the control plane's E2B mount,
under the path prefix it reads the target from; any other port is a process listening inside the
sandbox, reached through a socket in its network namespace — for a private sandbox (E2B's
`allowPublicTraffic: false`) only with its token in the `e2b-traffic-access-token` header (403, as
on E2B, without it).
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from typing import Protocol

from agentcell.server.gateway.route import Respond

IN_SANDBOX_PORTS = frozenset({49983, 49999})
CONTROL_PREFIX = b"/e2b/_sandbox/"
SIGNED_FILES_PATH = b"/e2b/_signed/files"
LABEL = re.compile(rb"^([0-9]{1,5})-([a-z0-9_]{1,64})$")
TRAFFIC_TOKEN_HEADER = b"e2b-traffic-access-token"
JSON = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class SandboxPort:
    sandbox_id: str
    port: int


class SandboxPorts(Protocol):
    """Implemented by the E2B mount (server/e2b/ports.py), handed to the GatewayRouter."""

    domain: bytes | None
    """lowercase; None turns host routing off"""

    def is_reachable(self, sandbox_id: str) -> bool:
        """Whether the sandbox runs, or is paused and resumes when reached (`connect` resumes it)."""
        ...

    def admits(self, sandbox_id: str, token: bytes | None) -> bool:
        """Whether a request that carries `token` (the `e2b-traffic-access-token` header, None when
        absent) may reach the sandbox's ports: any request for a public sandbox, one with its
        traffic access token for a private one. Called on every such request: keep it cheap."""
        ...

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        """A connected socket to 127.0.0.1:port inside the sandbox (ConnectionRefusedError if closed)."""
        ...

    def host_header(self, sandbox_id: str, port: int) -> bytes | None:
        """The Host header requests to this port are to arrive with, or None to keep the client's."""
        ...


def sandbox_port(host: bytes | None, domain: bytes | None) -> SandboxPort | None:
    """The sandbox and port a `Host: {port}-{sandboxId}.{domain}[:p]` names, or None."""
    if not host or not domain:
        return None
    hostname = host.rpartition(b":")[0] if host.count(b":") == 1 else host
    label, dot, rest = hostname.lower().partition(b".")
    found = LABEL.match(label) if dot and rest == domain else None
    if found is None or int(found[1]) > 65535:
        return None
    return SandboxPort(found[2].decode(), int(found[1]))


def is_signed_file_url(raw_path: bytes, query: bytes) -> bool:
    """`/files?…&signature=v1_…`: what `download_url()`/`upload_url()` build when the SDK is given
    `E2B_SANDBOX_URL` (the URL names no sandbox; the signature, made with its token, does)."""
    return raw_path == b"/files" and b"signature=v1_" in query


def control_path(target: SandboxPort, raw_path: bytes) -> bytes:
    """The path the E2B mount reads an in-sandbox request's target from."""
    return CONTROL_PREFIX + b"%d-%s" % (target.port, target.sandbox_id.encode()) + (raw_path or b"/")


def gone_body(target: SandboxPort) -> bytes:
    """The proxy's answer for a sandbox that does not exist; E2B's SDK matches 'was not found'."""
    message = f"The sandbox {target.sandbox_id} was not found"
    return json.dumps({"code": 502, "message": message, "sandboxId": target.sandbox_id}).encode()


def refusal(ports: SandboxPorts, target: SandboxPort, token: bytes | None) -> Respond | None:
    """The answer for a request that may not reach `target`'s port, or None to forward it: 502 for
    a sandbox that is not reachable, 403 for a private one without its traffic access token."""
    if not ports.is_reachable(target.sandbox_id):
        return Respond(502, [JSON], gone_body(target))
    if not ports.admits(target.sandbox_id, token):
        return Respond(403, [JSON], refused_body(target, token is not None))
    return None


def refused_body(target: SandboxPort, token_sent: bool) -> bytes:
    """E2B's 403 (its wording first), and what to send instead."""
    header = TRAFFIC_TOKEN_HEADER.decode()
    problem = (
        f"Provided token in header '{header}' is invalid"
        if token_sent
        else f"Token header '{header}' is missing"
    )
    message = (
        f"Sandbox is secured with traffic access token. {problem}: send the sandbox's "
        "trafficAccessToken (sandbox.traffic_access_token, from its create or connect answer) in "
        f"the {header} header"
    )
    return json.dumps({"code": 403, "message": message, "sandboxId": target.sandbox_id}).encode()
