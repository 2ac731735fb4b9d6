"""Which sandbox and port an in-sandbox (envd, code interpreter) request is for.

The E2B SDK names them in the `E2b-Sandbox-Id` / `E2b-Sandbox-Port` headers (with
`E2B_SANDBOX_URL`); the gateway turns the `{port}-{sandboxId}.{domain}` host form into the path
prefix `/_sandbox/{port}-{sandboxId}`. The mount resolves either into `scope["e2b.target"]`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

ENVD_PORT = 49983
JUPYTER_PORT = 49999
SANDBOX_ID_HEADER = b"e2b-sandbox-id"
SANDBOX_PORT_HEADER = b"e2b-sandbox-port"
ACCESS_TOKEN_HEADER = "x-access-token"
"""the envd access token, which E2B's SDKs send to envd and to the code interpreter's /execute"""
TRAFFIC_TOKEN_HEADER = "e2b-traffic-access-token"
"""what the code interpreter's SDK sends on every call when the sandbox has a
`trafficAccessToken` (its context calls carry nothing else)"""
HOST_PREFIX = "/_sandbox/"
SIGNED_FILES = "/_signed/files"
SCOPE_KEY = "e2b.target"


@dataclass(frozen=True, slots=True)
class Target:
    sandbox_id: str
    """empty for a signed file URL, whose signature names the sandbox"""
    port: int


def parse_label(label: str) -> Target | None:
    """`{port}-{sandboxId}` (the first DNS label of E2B's sandbox hosts), or None."""
    port, sep, sandbox_id = label.partition("-")
    if not sep or not port.isdigit() or len(port) > 5 or not sandbox_id or int(port) > 65535:
        return None
    return Target(sandbox_id, int(port))


def from_headers(headers: dict[bytes, bytes]) -> Target | None:
    sandbox_id = headers.get(SANDBOX_ID_HEADER, b"").decode("latin-1").strip()
    if not sandbox_id:
        return None
    port_text = headers.get(SANDBOX_PORT_HEADER, b"").decode("latin-1").strip()
    port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else ENVD_PORT
    return Target(sandbox_id, port)


def target_of(request: Request) -> Target:
    found: Target = request.scope[SCOPE_KEY]
    return found
