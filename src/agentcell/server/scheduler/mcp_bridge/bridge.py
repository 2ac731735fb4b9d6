"""The stdio MCP bridge: runs inside a function instance (Debian's python3, standard library only)
and serves a stdio MCP server over HTTP on $PORT: one server process per MCP session, or one for
all the instance's sessions when $AGENTCELL_STDIO_PROCESS is `shared` (see `SharedProcess`).

* Streamable HTTP (handshake era), at any path but /sse and /messages: `initialize` without a
  session starts a process and answers with its `Mcp-Session-Id`; later POSTs carry the id and get
  the JSON-RPC responses to their requests as JSON (202 for notifications); `GET` with the id is
  the session's server-to-client event stream, resumable with `Last-Event-ID` (a new GET replaces
  the one open; with $AGENTCELL_MCP_STREAM_MAX_S set, the bridge ends it after that many seconds,
  after a `retry` hint, and the client resumes it: MCP's SSE polling, for whatever between them
  cuts long streams); `DELETE` ends it.
* Modern era (a protocol version after the handshake era's, no session): each POST is answered by
  a process of its own, which then ends (or by the shared process).
* Legacy HTTP+SSE: `GET /sse` starts a process and streams an `endpoint` event, then every message
  the process writes; `POST /messages/?session_id=…` feeds it (202).

The command comes from $AGENTCELL_STDIO and runs with bash in /code, like a function's command.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlparse

HISTORY = 1000  # events kept per session for Last-Event-ID replay
RESPONSE_TIMEOUT_S = 300.0
STREAM_POLL_S = 15.0  # a comment line this often keeps idle streams alive
RETRY_MS = 100  # how soon a client reconnects to a GET stream the bridge ended
MAX_LINE = 8192  # a chunk-size or trailer line
MAX_BODY = 16 << 20  # a request's JSON-RPC message (or batch), in bytes
DRAIN_MAX = 256 << 20  # of a refused body, read (and dropped) after the answer
DRAIN_IDLE_S = 1.0
LEGACY_VERSIONS = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})

Message = dict[str, Any]
BRIDGE_INIT: Message = {
    "jsonrpc": "2.0",
    "id": "agentcell-bridge-initialize",
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "agentcell-mcp-bridge", "version": "1"},
    },
}
"""what the bridge sends a shared process no session has initialized, for a modern-era request"""


class BodyTooLarge(Exception):
    """A request body past MAX_BODY: refused (what follows is read and dropped, see `_drain`)."""


class SessionGone(Exception):
    """The session's stdio server process has exited: the session is over."""


class StdioProcess:
    """A stdio MCP server process: newline-delimited JSON-RPC written to it; each message it writes
    (each of a batch) is handed to `receive`, and `exited` runs once its output has ended."""

    def __init__(self, command: str) -> None:
        self.process = subprocess.Popen(
            ["/bin/bash", "-c", command],
            cwd="/code" if os.path.isdir("/code") else None,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
        )
        self._write_lock = threading.Lock()  # one line at a time: several sessions write

    def start(self, receive: Callable[[Any], None], exited: Callable[[], None]) -> None:
        threading.Thread(target=self._read, args=(receive, exited), daemon=True).start()

    def write(self, message: Any) -> None:
        """Write one JSON-RPC message (or batch); SessionGone when the process has exited."""
        assert self.process.stdin is not None
        line = json.dumps(message).encode() + b"\n"
        try:
            with self._write_lock:
                self.process.stdin.write(line)
                self.process.stdin.flush()
        except (OSError, ValueError) as exc:  # a broken pipe, or stdin already closed
            raise SessionGone("the stdio MCP server exited") from exc

    @property
    def has_exited(self) -> bool:
        return self.process.poll() is not None

    def _read(self, receive: Callable[[Any], None], exited: Callable[[], None]) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                print(f"bridge: not JSON from the stdio server: {line[:200]!r}", file=sys.stderr)
                continue
            for item in message if isinstance(message, list) else [message]:
                receive(item)  # a batch's answers each go where their request waits
        self.process.stdout.close()
        exited()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError), self._write_lock:
            assert self.process.stdin is not None
            self.process.stdin.close()


class Session:
    """One MCP session on a stdio server process: the responses its requests wait for, and the
    events (everything else the server sends it) of its GET stream."""

    def __init__(self, process: StdioProcess) -> None:
        self.id = uuid.uuid4().hex
        self.process = process
        self.lock = threading.Condition()
        self.waiting: dict[str, Message | None] = {}  # request id → its response, when it came
        self.events: list[tuple[int, bytes]] = []  # (event id, JSON) for the GET stream
        self.next_event = 1
        self.stream = 0  # the newest GET stream's number: an older one ends when a newer starts
        self.closed = False

    @property
    def is_over(self) -> bool:
        """The process exited (or the session was closed): nothing can reach it any more."""
        return self.closed or self.process.has_exited

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

    def deliver(self, message: Any) -> None:
        """A message from the server: the response a request waits for, else an event."""
        with self.lock:
            key = _id_key(message.get("id")) if isinstance(message, dict) else None
            is_response = isinstance(message, dict) and "method" not in message and key is not None
            if is_response and key in self.waiting:
                self.waiting[key] = message
            else:
                self.events.append((self.next_event, json.dumps(message).encode()))
                self.next_event += 1
                del self.events[:-HISTORY]
            self.lock.notify_all()

    def end(self) -> None:
        with self.lock:
            self.closed = True
            self.lock.notify_all()


def _chunk_size(line: bytes) -> int:
    size = int(line.split(b";")[0].strip(), 16)
    if size < 0:
        raise ValueError(f"bad chunk size {line[:40]!r}")
    return size


def _id_key(request_id: object) -> str | None:
    return None if request_id is None else json.dumps(request_id)


class OwnProcesses:
    """`session` (the default): every MCP session has a stdio server process of its own, which
    ends with it; nothing is shared between sessions."""

    def __init__(self, command: str) -> None:
        self.command = command

    def open(self) -> Session:
        process = StdioProcess(self.command)
        session = Session(process)
        process.start(session.deliver, session.end)
        return session

    open_stateless = open

    def send(self, session: Session, body: Any) -> None:
        session.process.write(body)

    def detach(self, session: Session) -> None:
        session.process.stop()


Renumbered = dict[int, tuple[Session, Any]]
"""an id (or progress token) the bridge gave a message → (the session concerned, its own)"""
Deliveries = list[tuple[Session, Any]]
"""the sessions a message of the server goes to, each with its copy"""


class SharedProcess:
    """`shared`: every MCP session of the instance talks to one stdio server process, started by
    the first and again after it exits, so a server that is slow to start (npx …) starts once.

    The server sees one client. The first `initialize` is forwarded and its answer kept to answer
    the later sessions' own (their `notifications/initialized` is not repeated); request ids and
    progress tokens are renumbered so that the sessions' own cannot clash, and each answer goes
    back, under its own id, to the session that asked. A request of the server (roots, sampling,
    elicitation) goes to the session it most likely works for (see `_asker`: a guess, as stdio
    does not say; a server that asks its client things while serving concurrent sessions belongs
    in `session` mode); its other notifications go to every session. The server's own state
    (what one session's tools did) is the same for all of them."""

    def __init__(self, command: str, spawn: Callable[[str], StdioProcess] = StdioProcess) -> None:
        self.command = command
        self.spawn = spawn
        self.lock = threading.Lock()
        self.process: StdioProcess | None = None
        self._reset()

    def _reset(self) -> None:
        self.sessions: list[Session] = []  # oldest first
        self.asked: Renumbered = {}  # our id of a session's request → (the session, its id)
        self.server_asked: Renumbered = {}  # our id of the server's request → (the session asked, its id)
        self.tokens: Renumbered = {}  # our progress token → (the session, its token)
        self.served: set[int] = set()  # our ids of requests the server has asked a session for
        self.init_id: int | None = None  # our id of the initialize forwarded, until answered
        self.init_waiting: list[tuple[Session, Any]] = []  # sessions (and ids) waiting for its answer
        self.init_result: Any = None
        self.initialized_sent = False
        self.ids = itertools.count(1)

    def open(self) -> Session:
        with self.lock:
            if self.process is None or self.process.has_exited:
                self._start()
            assert self.process is not None
            session = Session(self.process)
            self.sessions.append(session)
            return session

    def open_stateless(self) -> Session:
        """A session for one modern-era request: the process is initialized first if no session
        has done it (by the bridge, as a client of the newest handshake-era version)."""
        session = self.open()
        with self.lock:
            ready = self.init_result is not None
        if ready:
            return session
        key = _id_key(BRIDGE_INIT["id"])
        assert key is not None
        try:
            session.expect([key])
            self.send(session, BRIDGE_INIT)
            answer = session.responses([key])[0]
            if "result" not in answer:
                raise ConnectionError(f"the stdio MCP server refused to initialize: {answer.get('error')}")
            self.send(session, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        except BaseException:
            self.detach(session)
            raise
        return session

    def _start(self) -> None:
        for session in self.sessions:
            session.end()  # their process has exited
        self._reset()
        process = self.spawn(self.command)
        self.process = process
        process.start(lambda message: self._receive(process, message), lambda: self._exited(process))

    def send(self, session: Session, body: Any) -> None:
        messages = body if isinstance(body, list) else [body]
        with self.lock:
            if session.process is not self.process or session not in self.sessions:
                raise SessionGone("the stdio MCP server exited")
            forward, local = [], []
            for message in messages:
                out, answer = self._outgoing(session, message)
                if out is not None:
                    forward.append(out)
                if answer is not None:
                    local.append(answer)
        for answer in local:
            session.deliver(answer)
        if forward:
            session.process.write(forward if isinstance(body, list) else forward[0])

    def _outgoing(self, session: Session, message: Any) -> tuple[Any, Message | None]:
        """(what to write to the server for a session's message, or None; an answer made here)."""
        if not isinstance(message, dict):
            return message, None
        method, request_id = message.get("method"), cast(Any, message.get("id"))
        if method is None:  # a response to a request of the server
            entry = self.server_asked.get(request_id) if isinstance(request_id, int) else None
            if entry is None or entry[0] is not session:
                return None, None
            del self.server_asked[request_id]
            return {**message, "id": entry[1]}, None
        if request_id is None:
            return self._notification(session, method, message), None
        if method == "initialize":
            return self._initialize(session, message)
        ours = next(self.ids)
        self.asked[ours] = (session, request_id)
        return {**message, "id": ours, **self._progress_token(session, message, ours)}, None

    def _initialize(self, session: Session, message: Message) -> tuple[Any, Message | None]:
        if self.init_result is not None:
            return None, {"jsonrpc": "2.0", "id": message["id"], "result": self.init_result}
        self.init_waiting.append((session, message["id"]))
        if self.init_id is not None:
            return None, None  # answered with the first's
        self.init_id = next(self.ids)
        return {**message, "id": self.init_id}, None

    def _notification(self, session: Session, method: str, message: Message) -> Message | None:
        if method == "notifications/initialized":
            if self.initialized_sent:
                return None
            self.initialized_sent = True
            return message
        if method == "notifications/cancelled":
            params = message.get("params") or {}
            asked = params.get("requestId")
            ours = next((o for o, (s, t) in self.asked.items() if s is session and t == asked), None)
            return None if ours is None else {**message, "params": {**params, "requestId": ours}}
        return message

    def _progress_token(self, session: Session, message: Message, ours: int) -> dict[str, Any]:
        params: Any = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if not isinstance(meta, dict) or "progressToken" not in meta:
            return {}
        self.tokens[ours] = (session, meta["progressToken"])
        return {"params": {**params, "_meta": {**meta, "progressToken": ours}}}

    def _receive(self, process: StdioProcess, message: Any) -> None:
        with self.lock:
            if process is not self.process:
                return
            deliveries, reply = self._incoming(message)
        for session, out in deliveries:
            session.deliver(out)
        if reply is not None:
            with contextlib.suppress(SessionGone):
                process.write(reply)

    def _incoming(self, message: Any) -> tuple[Deliveries, Message | None]:
        """(the sessions a server's message goes to, each with its copy; a reply to the server)."""
        if not isinstance(message, dict):
            return [], None
        method, request_id = message.get("method"), cast(Any, message.get("id"))
        if method is None:
            return self._response(request_id, message), None
        if request_id is not None:
            return self._server_request(request_id, message)
        params: Any = message.get("params") or {}
        if method == "notifications/progress":
            return _renamed(message, "progressToken", self.tokens.get(params.get("progressToken"))), None
        if method == "notifications/cancelled":
            return _renamed(message, "requestId", self.server_asked.pop(params.get("requestId"), None)), None
        return [(session, message) for session in self.sessions], None

    def _response(self, request_id: Any, message: Message) -> Deliveries:
        if not isinstance(request_id, int):
            return []
        if request_id == self.init_id:
            self.init_id, waiting, self.init_waiting = None, self.init_waiting, []
            if "result" in message:
                self.init_result = message["result"]
            return [(session, {**message, "id": theirs}) for session, theirs in waiting]
        entry = self.asked.pop(request_id, None)
        self.tokens.pop(request_id, None)
        self.served.discard(request_id)
        return [] if entry is None else [(entry[0], {**message, "id": entry[1]})]

    def _server_request(self, request_id: Any, message: Message) -> tuple[Deliveries, Message | None]:
        to = self._asker()
        if to is None:
            error = {"code": -32603, "message": "no MCP client is connected to answer"}
            return [], {"jsonrpc": "2.0", "id": request_id, "error": error}
        ours = next(self.ids)
        self.server_asked[ours] = (to, request_id)
        return [(to, {**message, "id": ours})], None

    def _asker(self) -> Session | None:
        """Whom a request of the server is for (stdio says nothing of it): the session of the
        longest waiting request for which the server has asked nothing yet, else of the longest
        waiting one, else the newest session."""
        unserved = next((ours for ours in self.asked if ours not in self.served), None)
        if unserved is not None:
            self.served.add(unserved)
            return self.asked[unserved][0]
        if self.asked:
            return next(iter(self.asked.values()))[0]
        return self.sessions[-1] if self.sessions else None

    def _exited(self, process: StdioProcess) -> None:
        with self.lock:
            if process is not self.process:
                return
            sessions, self.sessions = self.sessions, []
        for session in sessions:
            session.end()

    def detach(self, session: Session) -> None:
        with self.lock:
            if session not in self.sessions:
                return
            self.sessions.remove(session)
            for table in (self.asked, self.tokens):
                for ours in [ours for ours, (s, _) in table.items() if s is session]:
                    del table[ours]
                    self.served.discard(ours)
            self.init_waiting = [(s, theirs) for s, theirs in self.init_waiting if s is not session]
            orphaned = [ours for ours, (s, _) in self.server_asked.items() if s is session]
            unanswered = [self.server_asked.pop(ours)[1] for ours in orphaned]
        for request_id in unanswered:  # the server would wait for them for ever
            error = {"code": -32603, "message": "the MCP session that was asked has ended"}
            with contextlib.suppress(SessionGone):
                session.process.write({"jsonrpc": "2.0", "id": request_id, "error": error})


def _renamed(message: Message, name: str, entry: tuple[Session, Any] | None) -> Deliveries:
    """The server's notification for the session `entry` names, with its param `name` as it knows it."""
    if entry is None:
        return []
    session, theirs = entry
    return [(session, {**message, "params": {**(message.get("params") or {}), name: theirs}})]


class Bridge:
    def __init__(self, channel: OwnProcesses | SharedProcess) -> None:
        self.channel = channel
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()

    def open(self) -> Session:
        session = self.channel.open()
        with self.lock:
            self.sessions[session.id] = session
        return session

    def open_stateless(self) -> Session:
        """A session for one modern-era request, never named to the client (close it after)."""
        return self.channel.open_stateless()

    def send(self, session: Session, body: Any) -> None:
        self.channel.send(session, body)

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
        self.channel.detach(session)
        session.end()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # an event stream's head and events are separate writes
    bridge: Bridge
    stream_max_s = 0.0  # a GET stream's longest life (0: none)

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
        is not JSON (or its chunked framing is broken), BodyTooLarge past MAX_BODY."""
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            data = self._chunked_body()
        else:
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                raise BodyTooLarge(f"the message is {length} bytes; at most {MAX_BODY} are taken")
            data = self.rfile.read(length)
        return json.loads(data or b"null")

    def _drain(self) -> None:
        """Read (and drop) what the client still sends of a refused body, up to DRAIN_MAX and
        while it keeps coming: closing a socket with bytes unread resets the connection, and the
        answer just sent could be lost with it."""
        self.connection.settimeout(DRAIN_IDLE_S)
        left = DRAIN_MAX
        with contextlib.suppress(OSError):
            while left > 0 and (chunk := self.rfile.read1(min(left, 1 << 16))):
                left -= len(chunk)

    def _chunked_body(self) -> bytes:
        chunks, total = [], 0
        while (size := _chunk_size(self.rfile.readline(MAX_LINE))) > 0:
            total += size
            if total > MAX_BODY:
                raise BodyTooLarge(f"the message is over {MAX_BODY} bytes, the most taken")
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
        except BodyTooLarge as exc:
            self.close_connection = True
            error = {"code": -32600, "message": f"{exc}: send less per request"}
            self._reply(413, {"jsonrpc": "2.0", "id": None, "error": error}, {"connection": "close"})
            self._drain()
            return
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
        """A modern-era request needs no session: a session of its own answers it, then ends (on a
        process of its own unless the process is shared: then no id can clash either)."""
        try:
            session = self.bridge.open_stateless()
        except (SessionGone, ConnectionError) as exc:
            self._error(502, str(exc), -32603)
            return
        try:
            self._exchange(session, body, messages, is_new=True, session_header=False)
        finally:
            self.bridge.close(session)

    def _exchange(
        self, session: Session, body: Any, messages: list[Message], is_new: bool, session_header: bool = True
    ) -> None:
        """Send the messages to the session's process and answer with its responses. A process
        that exits ends its session: 404 (the MCP answer for a session the server no longer has)."""
        ids = [key for m in messages if "method" in m and (key := _id_key(m.get("id"))) is not None]
        session.expect(ids)
        try:
            self.bridge.send(session, body)
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
            limit = self.stream_max_s
            self._pump(session, last, stream, time.monotonic() + limit if limit > 0 else None)
            if limit > 0:  # ended by the limit (or by a newer stream): how soon to come back
                self.wfile.write(f"retry: {RETRY_MS}\n\n".encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _pump(self, session: Session, last: int, stream: int, deadline: float | None = None) -> None:
        """Write the session's events after `last` as they come, until the session or stream
        ends, or at `deadline` (monotonic)."""
        while True:
            wait = STREAM_POLL_S if deadline is None else min(STREAM_POLL_S, deadline - time.monotonic())
            if wait <= 0 or (events := session.events_after(last, wait, stream)) is None:
                return
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
            self.bridge.send(session, body)
        except SessionGone as exc:
            self.bridge.close(session)
            self._error(404, str(exc))
            return
        self._reply(202)


def main() -> None:
    command = os.environ.get("AGENTCELL_STDIO")
    if not command:
        sys.exit("bridge: $AGENTCELL_STDIO names no command")
    sharing = os.environ.get("AGENTCELL_STDIO_PROCESS", "session")
    if sharing not in ("session", "shared"):
        sys.exit(f"bridge: $AGENTCELL_STDIO_PROCESS is {sharing!r}: session or shared")
    Handler.bridge = Bridge(SharedProcess(command) if sharing == "shared" else OwnProcesses(command))
    try:
        Handler.stream_max_s = float(os.environ.get("AGENTCELL_MCP_STREAM_MAX_S") or 0)
    except ValueError:
        sys.exit("bridge: $AGENTCELL_MCP_STREAM_MAX_S is not a number of seconds")
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
