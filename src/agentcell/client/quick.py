"""Calls without httpx or pydantic, for a fresh process: a sandbox created, a command run.

`agentcell sandbox create` and `agentcell exec` are what scripts and agents run most often in a
process of their own, and the SDK's imports (httpx, pydantic, the wire models) cost that process
~20 bare interpreter starts of CPU before its first byte is sent. Here the same request goes over
a plain socket as HTTP/1.0: the answer has no chunked framing to decode and ends with the
connection, and the server streams a command's NDJSON events as they come all the same.

Whatever this cannot do exactly as the SDK would is left to the SDK (`NotQuick`): an https:// or
proxied server, a server that takes no connection (nothing was sent), and every error answer (the
server created or ran nothing; the SDK asks again and words the refusal its own way). A connection
lost after the request went out, a created answer that names no sandbox, or a command stream that
stops before its `end` is reported here as the SDK would report it, and not retried: the sandbox
may exist, the command may have run.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit

from agentcell import __version__
from agentcell.client.command_wire import not_an_event, stream_without_end
from agentcell.client.config import ClientConfig
from agentcell.client.errors import AgentcellClientError, AgentcellConnectionError, ProtocolError

_PROXY_ENV = ("http_proxy", "all_proxy")
"""what httpx, trusting the environment as the SDK lets it, would send an http:// request through"""

OutputRelay = Callable[[str, str], object]
"""Called with ("stdout" or "stderr", data) for each output event, as it arrives."""


class NotQuick(Exception):
    """The SDK must make this call."""


@dataclass(frozen=True, slots=True)
class Server:
    """The server the SDK would call, when this module can call it as the SDK would."""

    config: ClientConfig
    url: SplitResult

    @classmethod
    def resolve(cls, api_url: str | None, api_key: str | None) -> Server:
        """NotQuick for a server the SDK reaches in a way a plain socket cannot."""
        try:
            config = ClientConfig.resolve(api_url, api_key)
        except AgentcellClientError:
            raise NotQuick from None  # a URL the SDK refuses, in its words
        url = urlsplit(config.api_url)
        if url.scheme != "http" or url.query or url.username is not None or _proxied():
            raise NotQuick  # (credentials in the URL: httpx sends them as Basic auth)
        return cls(config, url)

    def connect(self) -> socket.socket:
        try:
            return socket.create_connection(
                (self.url.hostname or "", self.url.port or 80), self.config.request_timeout_s
            )
        except OSError:
            raise NotQuick from None  # nothing sent

    def request(self, path: str, body: dict[str, Any]) -> bytes:
        """A POST of `body` as JSON to `path` under the server's URL, as HTTP/1.0."""
        content = json.dumps(body).encode()
        lines = [
            f"POST {self.url.path}{path} HTTP/1.0",
            f"host: {self.url.netloc}",
            f"user-agent: agentcell-python/{__version__}",
            "content-type: application/json",
            f"content-length: {len(content)}",
        ]
        if self.config.api_key:
            lines.append(f"authorization: Bearer {self.config.api_key}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + content

    def lost(self, why: str) -> AgentcellConnectionError:
        url = self.config.api_url
        return AgentcellConnectionError(
            f"the connection to the agentcell server at {url} failed: {why}", url=url
        )

    def too_slow(self, which: str) -> AgentcellConnectionError:
        url = self.config.api_url
        return AgentcellConnectionError(
            f"the agentcell server at {url} did not answer in time ({which})", url=url
        )


def create_sandbox(body: dict[str, Any], api_url: str | None, api_key: str | None) -> dict[str, Any]:
    """POST /v1/sandboxes with `body` (as the SDK would send it) and the created sandbox's JSON."""
    server = Server.resolve(api_url, api_key)
    with server.connect() as connection:
        try:
            connection.sendall(server.request("/v1/sandboxes", body))
            answer = _read_all(connection)
        except OSError as exc:
            raise server.lost(str(exc) or type(exc).__name__) from exc
    if not answer:
        raise server.lost("the server closed the connection without answering")
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


def run_command(server: Server, sandbox_id: str, body: dict[str, Any], relay: OutputRelay) -> dict[str, Any]:
    """POST /v1/sandboxes/{id}/commands with `body` (a foreground command, as the SDK would send
    it): each output event goes to `relay` as it arrives; returns the `end` event.

    The waits are the SDK's: connecting and sending take at most `request_timeout_s`, and the
    answer may then be silent for `ClientConfig.silence_limit_s` of the command's `timeout_s`, so
    a long quiet command is cut off no sooner than through the SDK (a command without a limit,
    never)."""
    with server.connect() as connection:
        try:
            connection.sendall(server.request(f"/v1/sandboxes/{quote(sandbox_id, safe='')}/commands", body))
        except TimeoutError:
            raise server.too_slow("WriteTimeout") from None
        except OSError as exc:
            raise server.lost(str(exc) or type(exc).__name__) from exc
        connection.settimeout(server.config.silence_limit_s(body["timeout_s"]))
        chunks = _received(server, connection)
        status, start = _status(server, chunks)
        if status >= 300:
            raise NotQuick  # an error answer: the command did not run
        for line in _lines(start, chunks):
            text = line.decode(errors="replace")  # as httpx decodes the stream
            if not text.strip():
                continue
            event = _event(text)
            if event["type"] == "end":
                return event
            if event["type"] != "start":
                relay(event["type"], event["data"])
    raise stream_without_end()


def _received(server: Server, connection: socket.socket) -> Iterator[bytes]:
    """What the server sends, as it comes, until it closes the connection."""
    while True:
        try:
            chunk = connection.recv(65536)
        except TimeoutError:
            raise server.too_slow("ReadTimeout") from None
        except OSError as exc:
            raise server.lost(str(exc) or type(exc).__name__) from exc
        if not chunk:
            return
        yield chunk


def _status(server: Server, chunks: Iterator[bytes]) -> tuple[int, bytes]:
    """The answer's status and the body bytes that came with its head."""
    received = b""
    for chunk in chunks:
        received += chunk
        head, found, body = received.partition(b"\r\n\r\n")
        if found:
            status = head.split(b" ", 2)[1:2]
            if not (status and status[0].isdigit() and len(status[0]) == 3):
                raise ProtocolError(f"the server's answer is not HTTP: {received[:300]!r}")
            return int(status[0]), body
    raise server.lost("the server closed the connection without answering")


def _lines(start: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The body's lines as they arrive; the last one also without its newline (as httpx's)."""
    pending = start
    while True:
        *lines, pending = pending.split(b"\n")
        yield from lines
        chunk = next(chunks, None)
        if chunk is None:
            break
        pending += chunk
    yield pending


def _event(text: str) -> dict[str, Any]:
    """One event of the stream, checked for what the SDK's wire models would refuse in it."""
    try:
        event = json.loads(text)
    except ValueError:
        event = None
    if not _is_event(event):
        raise not_an_event(text)
    assert isinstance(event, dict)
    return event


def _is_event(event: object) -> bool:
    if not isinstance(event, dict):
        return False
    kind = event.get("type")
    if kind in ("stdout", "stderr"):
        return isinstance(event.get("data"), str)
    if kind == "start":
        return isinstance(event.get("process_id"), str) and _is_int(event.get("pid"))
    if kind == "end":
        return (
            _is_int(event.get("exit_code"))
            and (event.get("signal") is None or _is_int(event.get("signal")))
            and isinstance(event.get("timed_out", False), bool)
            and isinstance(event.get("error"), str | None)
        )
    return False


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _proxied() -> bool:
    return any(os.environ.get(name) or os.environ.get(name.upper()) for name in _PROXY_ENV)
