"""The little HTTP/1.1 the egress proxy speaks: request heads in, short complete answers out."""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 << 10
FILE_CHUNK_BYTES = 256 << 10
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te"}
)
REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""never in a request head but as its line ends (CR LF) and in header values (HTAB): a bare LF
would forge lines in the server's log or smuggle headers past an origin, a NUL cut names short"""


class BadRequest(ValueError):
    """The client sent something that is not an HTTP/1.x request head we can serve."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def parse_request_head(raw: bytes) -> RequestHead:
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError as e:  # pragma: no cover - latin-1 decodes every byte
        raise BadRequest("undecodable request head") from e
    if bad := CONTROL.search(text.replace("\r\n", "").replace("\t", "")):
        raise BadRequest(f"control character {bad.group()!r} in the request head")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"not an HTTP/1.x request line: {lines[0][:100]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line: {line[:100]!r}")
        headers.append((name, value.strip()))
    return RequestHead(parts[0].upper(), parts[1], parts[2], tuple(headers))


async def read_request_head(reader: asyncio.StreamReader) -> RequestHead | None:
    """The next request head, or None if the client closed the connection before sending one."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise BadRequest("the connection closed in the middle of a request head") from e
    except asyncio.LimitOverrunError as e:
        raise BadRequest(f"request head larger than {MAX_HEAD_BYTES} bytes") from e
    return parse_request_head(raw[:-4])


def split_authority(authority: str, default_port: int) -> tuple[str, int]:
    """'host:port', '[v6]:port' or 'host' → (host, port); BadRequest if the port is not a port."""
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if not host:
        raise BadRequest(f"no host in {authority!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadRequest(f"bad port in {authority!r}")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class AbsoluteTarget:
    host: str
    port: int
    path: str
    """origin-form: path and query"""


def parse_absolute_target(target: str) -> AbsoluteTarget:
    """`http://host[:port]/path?q` (the form a client uses to ask a proxy for plain HTTP)."""
    url = urlsplit(target)
    if url.scheme.lower() != "http" or not url.netloc:
        raise BadRequest(
            f"only http:// URLs are proxied this way (https goes through CONNECT): {target[:100]!r}"
        )
    host, port = split_authority(url.netloc.rpartition("@")[2], 80)
    path = url.path or "/"
    return AbsoluteTarget(host, port, path + (f"?{url.query}" if url.query else ""))


def origin_head(head: RequestHead, path: str) -> bytes:
    """The request head to send to the origin server: origin-form target, no proxy or hop-by-hop
    headers, and `Connection: close` (one request per upstream connection)."""
    lines = [f"{head.method} {path} {head.version}"]
    lines += [f"{k}: {v}" for k, v in head.headers if k.lower() not in HOP_BY_HOP]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def response_head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def send_text(
    writer: asyncio.StreamWriter, status: int, text: str, extra: dict[str, str] | None = None
) -> None:
    """A complete short answer, after which the connection closes."""
    body = text.encode()
    headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body))}
    headers.update(extra or {})
    headers["Connection"] = "close"
    writer.write(response_head(status, headers) + body)
    await writer.drain()


async def send_bytes(writer: asyncio.StreamWriter, head: RequestHead, body: bytes, content_type: str) -> None:
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), "Connection": "close"}
    writer.write(response_head(200, headers) + (b"" if head.method == "HEAD" else body))
    await writer.drain()


async def send_file(writer: asyncio.StreamWriter, head: RequestHead, path: str, content_type: str) -> None:
    """A whole file as a 200 answer, in chunks (uvloop has no `sendfile`; the cache's files are
    usually in the page cache, so a chunk read does not hold the loop for long)."""
    with open(path, "rb") as f:  # noqa: ASYNC230 - see above
        size = os.fstat(f.fileno()).st_size
        headers = {"Content-Type": content_type, "Content-Length": str(size), "Connection": "close"}
        writer.write(response_head(200, headers))
        if head.method != "HEAD":
            while chunk := f.read(FILE_CHUNK_BYTES):
                writer.write(chunk)
                await writer.drain()
        await writer.drain()
