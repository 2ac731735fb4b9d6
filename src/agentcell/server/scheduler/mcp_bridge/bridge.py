"""The stdio MCP bridge: runs inside a function instance (Debian's python3, standard library only)
and serves a stdio MCP server over HTTP on $PORT, one server process per MCP session.

* Streamable HTTP (handshake era), at any path but /sse and /messages: `initialize` without a
  session starts a process and answers with its `Mcp-Session-Id`; later POSTs carry the id and get
  the JSON-RPC responses to their requests as JSON (202 for notifications); `GET` with the id is
  the session's server-to-client event stream, resumable with `Last-Event-ID` (a new GET replaces
  the one open); `DELETE` ends it.
* Modern era (a protocol version after the handshake era's, no session): each POST is answered by
  a process of its own, which then ends.
* Legacy HTTP+SSE: `GET /sse` starts a process and streams an `endpoint` event, then every message
  the process writes; `POST /messages/?session_id=…` feeds it (202).

The command comes from $AGENTCELL_STDIO and runs with bash in /code, like a function's command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

HISTORY = 1000  # events kept per session for Last-Event-ID replay
RESPONSE_TIMEOUT_S = 300.0
STREAM_POLL_S = 15.0  # a comment line this often keeps idle streams alive
MAX_LINE = 8192  # a chunk-size or trailer line
LEGACY_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})

Message = dict[str, Any]


class SessionGone(Exception):
    """The session's stdio server process has exited: the session is over."""


class Session:
    """One stdio server process and the routing of what it writes."""

    def __init__(self, command: str) -> None:
        self.id = uuid.uuid4().hex
        self.process = subprocess.Popen(
            ["/bin/bash", "-c", command],
            cwd="/code" if os.path.isdir("/code") else None,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
        )
        self.lock = threading.Condition()
        self.waiting: dict[str, Message | None] = {}  # request id → its response, when it came
        self.events: list[tuple[int, bytes]] = []  # (event id, JSON) for the GET stream
        self.next_event = 1
        self.stream = 0  # the newest GET stream's number: an older one ends when a newer starts
        self.closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def send(self, message: Message | list[Message]) -> None:
        """Write to the process; SessionGone when it has exited."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except (OSError, ValueError) as exc:  # a broken pipe, or stdin already closed
            raise SessionGone("the stdio MCP server exited") from exc

    @property
    def is_over(self) -> bool:
        """The process exited (or the session was closed): nothing can reach it any more."""
        return self.closed or self.process.poll() is not None

    def expect(self, ids: list[str]) -> None:
        with self.lock:
            for request_id in ids:
                self.waiting[request_id] = None

    def responses(self, ids: list[str]) -> list[Message]:
        """Wait for the responses to `ids` (in that order)."""
        with self.lock:
            done = self.lock.wait_for(
                lambda: self.closed or all(self.waiting.get(i) is not None for i in ids), RESPONSE_TIMEOUT_S
            )
            found = [self.waiting.pop(i, None) for i in ids]
        if not done or any(r is None for r in found):
            raise ConnectionError("the stdio MCP server exited or did not answer")
        return [r for r in found if r is not None]

    def new_stream(self) -> int:
        """Start a GET stream: it replaces the one open, if any (a client resuming with
        Last-Event-ID after a dropped connection must not wait for the old stream's end)."""
        with self.lock:
            self.stream += 1
            self.lock.notify_all()
            return self.stream

    def events_after(self, last: int, timeout_s: float, stream: int) -> list[tuple[int, bytes]] | None:
        """Events with an id above `last`; None once the session is closed or a newer stream
        than `stream` started."""
        with self.lock:
            self.lock.wait_for(
                lambda: self.closed or self.stream != stream or self._newest() > last, timeout_s
            )
            if self.stream != stream or (self.closed and self._newest() <= last):
                return None
            return [(n, data) for n, data in self.events if n > last]

    def _newest(self) -> int:
        return self.events[-1][0] if self.events else 0

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                print(f"bridge: not JSON from the stdio server: {line[:200]!r}", file=sys.stderr)
                continue
            self._route(message)
        with self.lock:
            self.closed = True
            self.lock.notify_all()

    def _route(self, message: Message) -> None:
        with self.lock:
            key = _id_key(message.get("id"))
            is_response = "method" not in message and key is not None
            if is_response and key in self.waiting:
                self.waiting[key] = message
            else:
                self.events.append((self.next_event, json.dumps(message).encode()))
                self.next_event += 1
                del self.events[:-HISTORY]
            self.lock.notify_all()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _chunk_size(line: bytes) -> int:
    size = int(line.split(b";")[0].strip(), 16)
    if size < 0:
        raise ValueError(f"bad chunk size {line[:40]!r}")
    return size


def _id_key(request_id: object) -> str | None:
    return None if request_id is None else json.dumps(request_id)


class Bridge:
    def __init__(self, command: str) -> None:
        self.command = command
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()

    def open(self) -> Session:
        session = Session(self.command)
        with self.lock:
            self.sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of that id; None when there is none, or its process has exited (the
        session is then closed: its id answers 404, and the client initializes a new one)."""
        with self.lock:
            session = self.sessions.get(session_id or "")
        if session is not None and session.is_over:
            self.close(session)
            return None
        return session

    def close(self, session: Session) -> None:
        with self.lock:
            self.sessions.pop(session.id, None)
        session.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # an event stream's head and events are separate writes
    bridge: Bridge

    def log_message(self, *args: object) -> None:
        pass

    # -- plumbing ----------------------------------------------------------------------------

    def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        # Head and body in one write: one segment, one wake-up of whoever reads it (the gateway
        # then gets a whole response in one read; end_headers() would write the head alone).
        self._headers_buffer.append(b"\r\n" + data)  # type: ignore[attr-defined]
        self.flush_headers()

    def _error(self, status: int, message: str, code: int = -32600) -> None:
        self._reply(status, {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}})

    def _body(self) -> Any:
        """The request's JSON body, sized by Content-Length or sent chunked; ValueError when it
        is not JSON (or its chunked framing is broken)."""
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            data = self._chunked_body()
        else:
            data = self.rfile.read(int(self.headers.get("content-length") or 0))
        return json.loads(data or b"null")

    def _chunked_body(self) -> bytes:
        chunks = []
        while (size := _chunk_size(self.rfile.readline(MAX_LINE))) > 0:
            chunks.append(self.rfile.read(size))
            self.rfile.readline(MAX_LINE)  # the CRLF after the chunk
        while self.rfile.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.end_headers()
        self.close_connection = True

    def _event(self, data: bytes, event: str = "message", event_id: int | None = None) -> None:
        head = f"id: {event_id}\n" if event_id is not None else ""
        self.wfile.write(f"{head}event: {event}\n".encode() + b"data: " + data + b"\n\n")
        self.wfile.flush()

    # -- routes ------------------------------------------------------------------------------

    def do_POST(self) -> None:
        url = urlparse(self.path)
        try:
            body = self._body()
        except ValueError:
            self._error(400, "the body is not JSON", -32700)
            return
        if url.path.rstrip("/").endswith("/messages"):
            self._legacy_post(url.query, body)
        else:
            self._streamable_post(body)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path.rstrip("/").endswith("/sse"):
            self._legacy_stream()
            return
        session = self.bridge.get(self.headers.get("mcp-session-id"))
        if session is None:
            self._error(404 if self.headers.get("mcp-session-id") else 400, "unknown or missing session")
            return
        self._session_stream(session, int(self.headers.get("last-event-id") or 0))

    def do_DELETE(self) -> None:
        session = self.bridge.get(self.headers.get("mcp-session-id"))
        if session is None:
            self._error(404, "unknown session")
            return
        self.bridge.close(session)
        self._reply(200)

    def _streamable_post(self, body: Any) -> None:
        messages = body if isinstance(body, list) else [body]
        if not messages or not all(isinstance(m, dict) for m in messages):
            self._error(400, "expected a JSON-RPC message or a batch of them")
            return
        session_id = self.headers.get("mcp-session-id")
        session = self.bridge.get(session_id)
        if session is None:
            if session_id is not None:
                self._error(404, "unknown session: initialize a new one")
                return
            if self._is_stateless():
                self._stateless_post(body, messages)
                return
            if messages[0].get("method") != "initialize":
                self._error(400, "no session: the first request must be initialize", -32601)
                return
            session = self.bridge.open()
        self._exchange(session, body, messages, is_new=session_id is None)

    def _is_stateless(self) -> bool:
        """A modern-era request (a protocol version the handshake era does not have)."""
        version = self.headers.get("mcp-protocol-version")
        return version is not None and version.strip() not in LEGACY_VERSIONS

    def _stateless_post(self, body: Any, messages: list[Message]) -> None:
        """A modern-era request needs no session: a process of its own answers it (no state
        is shared between requests or clients, and no request id can clash), then ends."""
        session = Session(self.bridge.command)
        try:
            self._exchange(session, body, messages, is_new=True, session_header=False)
        finally:
            session.close()

    def _exchange(
        self, session: Session, body: Any, messages: list[Message], is_new: bool, session_header: bool = True
    ) -> None:
        """Send the messages to the session's process and answer with its responses. A process
        that exits ends its session: 404 (the MCP answer for a session the server no longer has)."""
        ids = [key for m in messages if "method" in m and (key := _id_key(m.get("id"))) is not None]
        session.expect(ids)
        try:
            session.send(body)
            answers = session.responses(ids) if ids else []
        except (SessionGone, ConnectionError) as exc:
            if not session.is_over:
                self._error(502, str(exc), -32603)  # alive but silent: the session stays
                return
            self.bridge.close(session)
            status, message = (502, str(exc)) if is_new else (404, f"{exc}: initialize a new session")
            self._error(status, message, -32603)
            return
        headers = {"mcp-session-id": session.id} if session_header else {}
        if not ids:
            self._reply(202, headers=headers)
            return
        self._reply(200, answers if isinstance(body, list) else answers[0], headers)

    def _session_stream(self, session: Session, last: int) -> None:
        stream = session.new_stream()
        try:
            self._start_stream()
            self._pump(session, last, stream)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _pump(self, session: Session, last: int, stream: int) -> None:
        while (events := session.events_after(last, STREAM_POLL_S, stream)) is not None:
            if not events:
                self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()
            for event_id, data in events:
                self._event(data, event_id=event_id)
                last = event_id

    def _legacy_stream(self) -> None:
        session = self.bridge.open()
        try:
            self._start_stream()
            self._event(f"/messages/?session_id={session.id}".encode(), event="endpoint")
            self._pump(session, 0, session.new_stream())
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.bridge.close(session)

    def _legacy_post(self, query: str, body: Any) -> None:
        session_id = next(iter(parse_qs(query).get("session_id", [])), None)
        session = self.bridge.get(session_id)
        if session is None:
            self._error(404 if session_id else 400, "unknown or missing session_id")
            return
        try:
            session.send(body)
        except SessionGone as exc:
            self.bridge.close(session)
            self._error(404, str(exc))
            return
        self._reply(202)


def main() -> None:
    command = os.environ.get("AGENTCELL_STDIO")
    if not command:
        sys.exit("bridge: $AGENTCELL_STDIO names no command")
    Handler.bridge = Bridge(command)
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
