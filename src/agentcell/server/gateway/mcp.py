"""MCP through the gateway, the pure part: which transport era a request speaks, where its session
id is, and the rewrite of a legacy SSE `endpoint` event so the client's POSTs come back through
the gateway to the same instance.

* Modern era (protocol 2026-07-28 on): every request is self-contained, there is no session; any
  instance may answer (`is_stateless`).
* Legacy Streamable HTTP: `initialize` carries no session id; the server names one in the
  `Mcp-Session-Id` response header and every later request carries it.
* Legacy HTTP+SSE: `GET /sse` opens a stream whose first event (`endpoint`) names the URL to POST
  to, with the session id in its query (`session_id`, or `sessionId` from TypeScript servers).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, urlsplit

from agentcell.errors import InvalidArgument
from agentcell.server.gateway.keys import MCP_SESSION_HEADER, mcp_session_key
from agentcell.server.gateway.route import RequestHead

log = logging.getLogger(__name__)

LEGACY_VERSIONS = frozenset({b"2024-11-05", b"2025-03-26", b"2025-06-18", b"2025-11-25"})
VERSION_HEADER = b"mcp-protocol-version"
QUERY_KEYS = ("session_id", "sessionId")
MAX_FIRST_EVENT = 64 << 10


def is_stateless(head: RequestHead) -> bool:
    """A modern-era request: it names a protocol version the handshake era does not have."""
    version = head.header(VERSION_HEADER)
    return version is not None and version.strip() not in LEGACY_VERSIONS


def query_session_id(query: bytes) -> str | None:
    """The legacy SSE session id of a `POST /messages?session_id=…`, if the query has one."""
    if not query:
        return None
    values = parse_qs(query.decode("latin-1"))
    for name in QUERY_KEYS:
        if name in values:
            return values[name][0]
    return None


class SessionNaming:
    """Names a new MCP session from the instance's answer to a handshake-era request, and only
    from a 2xx one: the `Mcp-Session-Id` of the answer to a POST (`initialize`), or the id in a
    legacy SSE stream's `endpoint` event. A failed request names nothing (an SDK server puts a
    fresh id even on its 400 answers), so its session and instance are given back at its end.

    `name` receives the session key the id is routed by (`keys.mcp_session_key`).
    """

    __slots__ = ("_method", "_name", "_succeeded")

    def __init__(self, method: bytes, name: Callable[[str], None]) -> None:
        self._method = method
        self._name = name
        self._succeeded = False

    def on_response_head(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self._succeeded = 200 <= status < 300
        if not self._succeeded or self._method != b"POST":
            return
        for name, value in headers:
            if name.lower() == MCP_SESSION_HEADER:
                self._bind(value.decode("latin-1").strip())
                return

    def from_endpoint(self, session_id: str) -> None:
        """The id a legacy SSE stream's `endpoint` event names (see `EndpointRewriter`)."""
        if self._succeeded:
            self._bind(session_id)

    def _bind(self, session_id: str) -> None:
        try:
            key = mcp_session_key(session_id, "the server's answer")
        except InvalidArgument as exc:
            log.warning("MCP session id cannot be bound (%s); requests will not find it", exc.message)
            return
        self._name(key)


class EndpointRewriter:
    """A body filter for a legacy SSE stream: holds the bytes of the first event until it is
    complete, prefixes its `endpoint` path with the function's mount (so the client POSTs back
    through the gateway) and reports the session id it names; later bytes pass untouched."""

    def __init__(self, mount: bytes, on_session: Callable[[str], None]) -> None:
        self._mount = mount
        self._on_session = on_session
        self._buffer = b""
        self._done = False

    def __call__(self, data: bytes) -> bytes:
        if self._done:
            return data
        self._buffer += data
        end, sep = _event_end(self._buffer)
        if end < 0:
            if len(self._buffer) > MAX_FIRST_EVENT:  # not an MCP stream after all
                self._done = True
                return self._buffer
            return b""
        self._done = True
        event, rest = self._buffer[:end], self._buffer[end:]
        self._buffer = b""
        return self._rewrite(event, sep) + rest

    def _rewrite(self, event: bytes, sep: bytes) -> bytes:
        lines = event.split(sep[: len(sep) // 2])
        if b"event: endpoint" not in (line.rstrip() for line in lines):
            return event
        out = []
        for line in lines:
            if line.startswith(b"data:"):
                line = b"data: " + self._endpoint(line[5:].strip())
            out.append(line)
        return sep[: len(sep) // 2].join(out)

    def _endpoint(self, url: bytes) -> bytes:
        parts = urlsplit(url.decode("latin-1"))
        session_id = query_session_id(parts.query.encode("latin-1"))
        if session_id is not None:
            self._on_session(session_id)
        if parts.scheme or parts.netloc or not parts.path.startswith("/"):
            return url  # absolute or relative to the stream: already through the gateway's origin
        return self._mount + url


def _event_end(buffer: bytes) -> tuple[int, bytes]:
    """Where the first SSE event ends and with which blank-line separator (-1 if not yet)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        index = buffer.find(sep)
        if index >= 0:
            return index, sep
    return -1, b""
