"""Pure routing-key extraction: which function a request is for, and which session it belongs to.

No I/O and no scheduler: a request head in, names and keys out. A malformed session key raises
InvalidArgument, so it is refused before it can be used to reach an instance.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from agentcell.errors import InvalidArgument
from agentcell.protocol.functions import Affinity

FN_PREFIX = b"/fn/"
FUNCTION_NAME = re.compile(rb"^[a-z][a-z0-9-]{0,62}$")
SESSION_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
MCP_SESSION_HEADER = b"mcp-session-id"
MCP_SESSION_ID = re.compile(r"[\x21-\x7e]+")
"""what the MCP spec allows in a session id: visible ASCII, any length"""
MCP_DIGEST_PREFIX = "mcp-sha256:"


@dataclass(frozen=True, slots=True)
class FunctionTarget:
    name: str
    path: bytes
    """the path the instance sees (the `/fn/{name}` prefix removed)"""
    mount: bytes
    """the prefix the client used (`/fn/{name}`), empty for host-based routing"""
    drop: frozenset[bytes] = frozenset()
    """request headers not to forward (the one that carried the caller's agentcell key)"""


def function_target(raw_path: bytes, host: bytes | None, domain: bytes | None) -> FunctionTarget | None:
    """`Host: {name}.{domain}` or `/fn/{name}/rest`; None when the request is not for a function.

    The host wins: on its own host a function owns every path, `/fn/…` included, so a request
    for `chat.{domain}/fn/other/x` reaches chat (with its path intact), never another function.
    """
    if domain and host:
        hostname = host.rpartition(b":")[0] if host.count(b":") == 1 else host
        label, dot, rest = hostname.lower().partition(b".")
        if dot and rest == domain and FUNCTION_NAME.match(label):
            return FunctionTarget(label.decode(), raw_path or b"/", b"")
    if raw_path.startswith(FN_PREFIX):
        name, slash, rest = raw_path[len(FN_PREFIX) :].partition(b"/")
        if FUNCTION_NAME.match(name):
            return FunctionTarget(name.decode(), slash + rest or b"/", FN_PREFIX + name)
    return None


def _checked(key: str, where: str) -> str:
    if not SESSION_KEY.match(key):
        raise InvalidArgument(
            f"session key in {where} must be 1-128 characters of letters, digits and . _ : @ / -, "
            "starting with a letter or digit"
        )
    return key


def mcp_session_key(session_id: str, where: str = "header mcp-session-id") -> str:
    """The session key an MCP session id is routed by: the id itself when it is a plain session
    key, else a digest of it (a base64 id, a long JWT), so every id the MCP spec allows works.

    Ids that look like a digest key are digested too, so no two ids share a key.
    """
    if not MCP_SESSION_ID.fullmatch(session_id):
        raise InvalidArgument(f"MCP session id in {where} must be visible ASCII characters (0x21-0x7E)")
    if SESSION_KEY.fullmatch(session_id) and not session_id.startswith(MCP_DIGEST_PREFIX):
        return session_id
    return MCP_DIGEST_PREFIX + hashlib.sha256(session_id.encode("ascii")).hexdigest()


def cookie_value(cookie_header: bytes, name: str) -> str | None:
    for part in cookie_header.decode("latin-1").split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key == name:
            return value.strip().strip('"')
    return None


def session_key(affinity: Affinity, header_value: bytes | None, cookie_header: bytes | None) -> str | None:
    """The request's session key under `affinity`, None when it carries none.

    `header_value` is the value of the affinity's header (for `header`) or `Mcp-Session-Id` (for
    `mcp`); `cookie_header` is the request's Cookie header (for `cookie`).
    """
    if affinity.kind == "mcp":
        return None if header_value is None else mcp_session_key(header_value.decode("latin-1").strip())
    if affinity.kind == "header":
        if header_value is None:
            return None
        return _checked(header_value.decode("latin-1").strip(), f"header {affinity.header}")
    if affinity.kind == "cookie" and cookie_header is not None:
        value = cookie_value(cookie_header, affinity.cookie)
        return None if value is None else _checked(value, f"cookie {affinity.cookie}")
    return None
