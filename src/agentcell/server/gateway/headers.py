"""Header rewriting for the proxy: what crosses a hop, what is added, how bodies are framed.

Pure functions over bytes. Hop-by-hop headers (RFC 9110 §7.6.1: `Connection`, the headers it
names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`) never
cross the gateway; each side gets its own framing and connection management. `Upgrade` is
re-added on a WebSocket (or any upgrade) handshake.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from enum import IntEnum
from http import HTTPStatus
from typing import Any

from agentcell.server.gateway.route import REQUEST_ID_HEADER, RequestHead, Respond

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})
# Names a `Connection` header may not remove: dropping the Content-Length (or the Host) of a
# message whose body is still forwarded would let its body be read as the next message (request
# smuggling, or a response the client cannot delimit).
_NEVER_NAMED = _CONNECTION_OPTIONS | {b"content-length", b"host", b""}

# What the proxy does with a header, by its lowercase name.
PLAIN = 0  # passed through
HOP = 1  # hop-by-hop: dropped
CONNECTION = 2  # dropped, and so are the headers it names
CONTENT_LENGTH = 3
TRANSFER_ENCODING = 4  # dropped; the gateway frames each side itself
FORWARDED = 5  # x-forwarded-*: replaced, or extended when the gateway trusts them
REQUEST_ID = 6  # x-request-id: replaced by the request's id (the client's, if usable)
_KINDS = {name: HOP for name in HOP_BY_HOP} | {
    b"connection": CONNECTION,
    b"content-length": CONTENT_LENGTH,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"x-forwarded-for": FORWARDED,
    b"x-forwarded-proto": FORWARDED,
    b"x-forwarded-host": FORWARDED,
    REQUEST_ID_HEADER: REQUEST_ID,
}
NAME_CACHE: dict[bytes, tuple[bytes, int]] = {}  # raw name -> (lowercase name, kind); names repeat
_NAMES_CACHED = 4096
_TOKENS_CACHE: dict[bytes, frozenset[bytes]] = {}  # Connection value -> the names it lists
_NO_TOKENS: frozenset[bytes] = frozenset()

_REASONS = {int(s): s.phrase.encode("latin-1") for s in HTTPStatus}
_STATUS_LINES: dict[int, bytes] = {}


def name_info(name: bytes) -> tuple[bytes, int]:
    """(lowercase name, kind) of a header name, cached for the names that keep coming back."""
    info = NAME_CACHE.get(name)
    if info is None:
        lname = name.lower()
        info = (lname, _KINDS.get(lname, PLAIN))
        if len(NAME_CACHE) < _NAMES_CACHED:
            NAME_CACHE[name] = info
    return info


def header_index(headers: tuple[tuple[bytes, bytes], ...]) -> Mapping[bytes, bytes]:
    """Lowercase name -> value of a request's headers (duplicates joined with ", ", cookies with
    "; "), shared by requests with the same headers: the answer must not be changed."""
    index = _INDEXES.get(headers)
    if index is None:
        index = {}
        for name, value in headers:
            lname = (NAME_CACHE.get(name) or name_info(name))[0]
            seen = index.get(lname)
            index[lname] = value if seen is None else seen + (b"; " if lname == b"cookie" else b", ") + value
        remember(_INDEXES, headers, index, _size(headers))
    return index


class Framing(IntEnum):
    """How a response body is delimited on the client side."""

    NONE = 0  # no body: HEAD, 1xx, 204, 304
    LENGTH = 1  # Content-Length passed through
    CHUNKED = 2  # re-chunked by the gateway
    CLOSE = 3  # until the connection closes (HTTP/1.0 client, unknown length)


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <status> <reason>\r\n` with the standard reason phrase (cached)."""
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
        _STATUS_LINES[status] = line
    return line


def connection_tokens(value: bytes | None) -> frozenset[bytes]:
    """Header names listed in a `Connection` value (beyond the standard options, and never the
    framing headers: see _NEVER_NAMED), lowercased; cached, as clients send the same few values
    (`keep-alive`) on every request."""
    if not value:
        return _NO_TOKENS
    tokens = _TOKENS_CACHE.get(value)
    if tokens is None:
        tokens = frozenset({t.strip().lower() for t in value.split(b",")} - _NEVER_NAMED)
        if len(_TOKENS_CACHE) < _NAMES_CACHED:
            _TOKENS_CACHE[value] = tokens
    return tokens


def upstream_request_head(
    head: RequestHead,
    *,
    path: bytes,
    chunked: bool,
    upgrade: bytes | None,
    proto: bytes,
    trust_forwarded: bool,
    drop: frozenset[bytes] = frozenset(),
    host: bytes | None = None,
) -> bytes:
    """The request head the gateway sends upstream (always HTTP/1.1, keep-alive).

    X-Forwarded-For gets the client address (appended to the client's value only when the
    gateway trusts forwarded headers, i.e. sits behind another proxy); X-Forwarded-Proto and
    X-Forwarded-Host describe the request as the gateway received it; X-Request-Id carries the
    request's id. `host`, when given, replaces the client's Host header (X-Forwarded-Host keeps it).
    """
    key = (tuple(head.headers), head.client, proto, trust_forwarded, drop)
    fields = _REQUEST_FIELDS.get(key)
    if fields is None:
        fields = _forwarded_fields(head, proto=proto, trust_forwarded=trust_forwarded, drop=drop)
        remember(_REQUEST_FIELDS, key, fields, _size(head.headers))
    target = path + b"?" + head.query if head.query else path
    out = [head.method, b" ", target, b" HTTP/1.1\r\n", fields, b"x-request-id: ", head.request_id.encode()]
    if host is not None:
        out += (b"\r\nhost: ", host)
    if chunked:
        out.append(b"\r\ntransfer-encoding: chunked")
    if upgrade is not None:
        out += (b"\r\nconnection: upgrade\r\nupgrade: ", upgrade)
    out.append(b"\r\n\r\n")
    return b"".join(out)


# Clients send the same headers request after request (on a keep-alive connection, from one SDK),
# and upstreams answer with the same ones (their `date` changes once a second): the rewritten
# header lines are kept by the exact headers they came from, which skips the per-header work
# (a third of the gateway's Python per request). Only small heads are kept, at most MEMO_SIZE
# of each kind (the memo is emptied when full); the known heads of `connection` and `upstream`
# are kept the same way.
MEMO_SIZE = 1024
MEMO_BYTES = 4096
_INDEXES: dict[object, Mapping[bytes, bytes]] = {}
_REQUEST_FIELDS: dict[object, bytes] = {}
_RESPONSE_PLANS: dict[object, tuple[bytes, Framing, bool, bool, int, bool]] = {}


def remember(memo: dict[Any, Any], key: object, value: Any, size: int) -> None:
    """Keep `value` under `key` unless what it holds is `size` bytes over MEMO_BYTES (a client's
    or a function's big headers never stay in memory); a full memo is emptied first."""
    if size > MEMO_BYTES:
        return
    if len(memo) >= MEMO_SIZE:
        memo.clear()
    memo[key] = value


def _size(headers: Sequence[tuple[bytes, bytes]]) -> int:
    return sum(len(n) + len(v) for n, v in headers)


def _forwarded_fields(
    head: RequestHead, *, proto: bytes, trust_forwarded: bool, drop: frozenset[bytes]
) -> bytes:
    """The header lines sent upstream, before X-Request-Id: the client's end-to-end headers
    (minus those `Connection` names and `drop`) and X-Forwarded-*."""
    index = head.index
    out: list[bytes] = []
    named = connection_tokens(index.get(b"connection")) if b"connection" in index else None
    names = NAME_CACHE
    for name, value in head.headers:
        lname, kind = names.get(name) or name_info(name)
        if kind in (PLAIN, CONTENT_LENGTH) and (named is None or lname not in named) and lname not in drop:
            out += (name, b": ", value, b"\r\n")
    ip = head.client.encode("latin-1")  # "" for a Unix-socket client: nothing to add
    xff = index.get(b"x-forwarded-for") if trust_forwarded else None
    if ip or xff:
        out += (b"x-forwarded-for: ", (xff + b", " + ip if ip else xff) if xff else ip, b"\r\n")
    sent_proto = index.get(b"x-forwarded-proto") if trust_forwarded else None
    out += (b"x-forwarded-proto: ", sent_proto or proto, b"\r\n")
    host = (index.get(b"x-forwarded-host") if trust_forwarded else None) or index.get(b"host")
    if host:
        out += (b"x-forwarded-host: ", host, b"\r\n")
    return b"".join(out)


def plan_response(
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    no_body: bool,
    client_http10: bool,
    keep_alive: bool,
    extra: Sequence[tuple[bytes, bytes]],
    request_id: bytes = b"",
) -> tuple[bytes, Framing, bool, bool, int]:
    """Rewrite an upstream response head for the client and choose the body framing. The answer
    carries `request_id` as X-Request-Id unless the upstream set one itself.

    Returns (head bytes, framing, keep the client connection alive, the upstream body ends
    only when the upstream closes, the Content-Length or -1).
    """
    key = (status, tuple(headers), no_body, client_http10, keep_alive, tuple(extra))
    plan = _RESPONSE_PLANS.get(key)
    if plan is None:
        plan = _plan_response(status, headers, no_body, client_http10, keep_alive, extra)
        remember(_RESPONSE_PLANS, key, plan, _size(headers))
    fields, framing, keep_alive, until_close, length, has_request_id = plan
    end = _connection_line(keep_alive, client_http10)
    if request_id and not has_request_id:
        head = b"".join((fields, b"x-request-id: ", request_id, b"\r\n", end))
    else:
        head = fields + end
    return head, framing, keep_alive, until_close, length


def _plan_response(
    status: int,
    headers: Sequence[tuple[bytes, bytes]],
    no_body: bool,
    client_http10: bool,
    keep_alive: bool,
    extra: Sequence[tuple[bytes, bytes]],
) -> tuple[bytes, Framing, bool, bool, int, bool]:
    """`plan_response` without the X-Request-Id and the connection line: (status line and header
    lines, framing, keep-alive, until close, length, whether the upstream sent X-Request-Id)."""
    out = [_STATUS_LINES.get(status) or status_line(status)]
    length = -1
    upstream_chunked = False
    has_request_id = False
    named: frozenset[bytes] | None = None
    names = NAME_CACHE
    for name, value in headers:
        kind = (names.get(name) or name_info(name))[1]
        if kind == PLAIN:
            out += (name, b": ", value, b"\r\n")
        elif kind == CONTENT_LENGTH:
            length = int(value)
            if status != 204:  # (RFC 9110 §8.6: a 204 carries no Content-Length)
                out += (name, b": ", value, b"\r\n")
        elif kind == TRANSFER_ENCODING:
            upstream_chunked = b"chunked" in value.lower()
        elif kind == CONNECTION:
            named = connection_tokens(value) | (named or frozenset())
        elif kind == FORWARDED:
            out += (name, b": ", value, b"\r\n")
        elif kind == REQUEST_ID:
            out += (name, b": ", value, b"\r\n")
            has_request_id = True
    if named:
        out = [out[0], *_drop_named(out[1:], named)]
    if no_body:
        framing = Framing.NONE
    elif length >= 0 and not upstream_chunked:
        framing = Framing.LENGTH
    elif client_http10:
        framing, keep_alive = Framing.CLOSE, False
    else:
        framing = Framing.CHUNKED
        out.append(b"transfer-encoding: chunked\r\n")
    for name, value in extra:
        out += (name, b": ", value, b"\r\n")
    until_close = not no_body and length < 0 and not upstream_chunked
    return b"".join(out), framing, keep_alive, until_close, length, has_request_id


def _drop_named(parts: list[bytes], named: frozenset[bytes]) -> list[bytes]:
    """Drop header lines (4 parts each: name, ": ", value, CRLF) whose names `Connection` listed."""
    kept: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i].lower() not in named:
            kept += parts[i : i + 4]
    return kept


def _connection_line(keep_alive: bool, client_http10: bool) -> bytes:
    if not keep_alive:
        return b"connection: close\r\n\r\n"
    return b"connection: keep-alive\r\n\r\n" if client_http10 else b"\r\n"


def upgrade_response_head(
    headers: Sequence[tuple[bytes, bytes]],
    upgrade: bytes,
    extra: Sequence[tuple[bytes, bytes]],
) -> bytes:
    """The 101 head for the client: upstream headers minus hop-by-hop, plus Upgrade/Connection."""
    out = [status_line(101)]
    for name, value in headers:
        lname = name.lower()
        if lname == b"upgrade":
            upgrade = value
        elif lname not in HOP_BY_HOP:
            out += (name, b": ", value, b"\r\n")
    for name, value in extra:
        out += (name, b": ", value, b"\r\n")
    out += (b"connection: upgrade\r\nupgrade: ", upgrade, b"\r\n\r\n")
    return b"".join(out)


def interim_head(status: int, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A 1xx response (100 Continue, 103 Early Hints) passed on to an HTTP/1.1 client."""
    out = [status_line(status)]
    for name, value in headers:
        if name.lower() not in HOP_BY_HOP:
            out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


def respond_bytes(respond: Respond, *, keep_alive: bool, client_http10: bool, no_body: bool) -> bytes:
    """A complete response for a `Respond` route (Content-Length framed)."""
    out = [status_line(respond.status)]
    for name, value in respond.headers:
        if name.lower() not in HOP_BY_HOP and name.lower() != b"content-length":
            out += (name, b": ", value, b"\r\n")
    if respond.status >= 200 and respond.status not in (204, 304):
        out.append(b"content-length: %d\r\n" % len(respond.body))
    out.append(_connection_line(keep_alive, client_http10))
    if not no_body:
        out.append(respond.body)
    return b"".join(out)


def error_envelope(status: int, code: str, message: str, request_id: str) -> Respond:
    """The default `ErrorResponder`: the project's `{"code", "message", "request_id"}` envelope."""
    body = json.dumps({"code": code, "message": message, "request_id": request_id}).encode()
    headers = ((b"content-type", b"application/json"), (b"x-request-id", request_id.encode()))
    return Respond(status, headers, body)
