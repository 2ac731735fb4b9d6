"""One call without httpx or pydantic: a sandbox created from a fresh process.

`agentcell sandbox create` is what scripts and agents run most often in a process of its own, and
the SDK's imports (httpx, pydantic, the wire models) cost that process ~20 bare interpreter starts
of CPU before its first byte is sent. Here the same request goes over a plain socket as HTTP/1.0
(no chunked answer to decode, the answer ends with the connection), and the answer's JSON comes
back as it is.

Whatever this cannot do exactly as the SDK would is left to the SDK (`NotQuick`): an https:// or
proxied server, a server that takes no connection (nothing was sent), and every error answer (the
server created nothing; the SDK asks again and words the refusal its own way). A connection lost
after the request went out, or a created answer that names no sandbox, is reported here as the SDK
would report it, and not retried: the sandbox may exist.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any
from urllib.parse import urlsplit

from agentcell import __version__
from agentcell.client.config import ClientConfig
from agentcell.client.errors import AgentcellClientError, AgentcellConnectionError, ProtocolError

_PROXY_ENV = ("http_proxy", "all_proxy")
"""what httpx, trusting the environment as the SDK lets it, would send an http:// request through"""


class NotQuick(Exception):
    """The SDK must make this call."""


def create_sandbox(body: dict[str, Any], api_url: str | None, api_key: str | None) -> dict[str, Any]:
    """POST /v1/sandboxes with `body` (as the SDK would send it) and the created sandbox's JSON."""
    try:
        config = ClientConfig.resolve(api_url, api_key)
    except AgentcellClientError:
        raise NotQuick from None  # a URL the SDK refuses, in its words
    url = urlsplit(config.api_url)
    if url.scheme != "http" or url.query or url.username is not None or _proxied():
        raise NotQuick  # (credentials in the URL: httpx sends them as Basic auth)
    try:
        connection = socket.create_connection((url.hostname or "", url.port or 80), config.request_timeout_s)
    except OSError:
        raise NotQuick from None  # nothing sent
    with connection:
        try:
            connection.sendall(_request(url.netloc, f"{url.path}/v1/sandboxes", config.api_key, body))
            answer = _read_all(connection)
        except OSError as exc:
            raise _lost(config.api_url, str(exc) or type(exc).__name__) from exc
    if not answer:
        raise _lost(config.api_url, "the server closed the connection without answering")
    head, _, payload = answer.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status and status[0].isdigit() and len(status[0]) == 3 and status[0] != b"201":
        raise NotQuick  # an error answer: nothing was created
    try:
        created = json.loads(payload)
    except ValueError:
        created = None
    if not isinstance(created, dict) or not isinstance(created.get("id"), str):
        raise ProtocolError(f"POST /v1/sandboxes answered something that is not a sandbox: {answer[:300]!r}")
    return created


def _lost(api_url: str, why: str) -> AgentcellConnectionError:
    return AgentcellConnectionError(
        f"the connection to the agentcell server at {api_url} failed: {why}", url=api_url
    )


def _request(host: str, path: str, api_key: str | None, body: dict[str, Any]) -> bytes:
    """An HTTP/1.0 request: the answer then has no chunked framing and ends with the connection."""
    content = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.0",
        f"host: {host}",
        f"user-agent: agentcell-python/{__version__}",
        "content-type: application/json",
        f"content-length: {len(content)}",
    ]
    if api_key:
        lines.append(f"authorization: Bearer {api_key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


def _read_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _proxied() -> bool:
    return any(os.environ.get(name) or os.environ.get(name.upper()) for name in _PROXY_ENV)
