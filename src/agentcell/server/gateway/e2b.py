"""E2B's sandbox hosts, `{port}-{sandboxId}.{domain}` (what `Sandbox.get_host(port)` returns): pure
parsing, and what the gateway needs from whoever can reach a sandbox's ports.

Requests for envd (49983) or the code interpreter (49999) go to the control plane's E2B mount,
under the path prefix it reads the target from; any other port is a process listening inside the
sandbox, reached through a socket in its network namespace.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from typing import Protocol

IN_SANDBOX_PORTS = frozenset({49983, 49999})
CONTROL_PREFIX = b"/e2b/_sandbox/"
SIGNED_FILES_PATH = b"/e2b/_signed/files"
LABEL = re.compile(rb"^([0-9]{1,5})-([a-z0-9_]{1,64})$")


@dataclass(frozen=True, slots=True)
class SandboxPort:
    sandbox_id: str
    port: int


class SandboxPorts(Protocol):
    """Implemented by the E2B mount (server/e2b/ports.py), handed to the GatewayRouter."""

    domain: bytes | None
    """lowercase; None turns host routing off"""

    def is_running(self, sandbox_id: str) -> bool: ...

    async def connect(self, sandbox_id: str, port: int) -> socket.socket:
        """A connected socket to 127.0.0.1:port inside the sandbox (ConnectionRefusedError if closed)."""
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
