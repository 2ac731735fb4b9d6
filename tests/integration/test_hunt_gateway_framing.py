"""The gateway against hostile HTTP on the real server: each request reaches an instance as exactly
one unambiguous request, and each answer reaches only the request it belongs to.

Clients speak raw HTTP/1.1 over sockets; the hostile upstream is a deployed function that writes
raw bytes (written to tmp_path by the test and deployed like any other).
"""

from __future__ import annotations

import contextlib
import json
import socket
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_API_KEY, ServerProcess
from tests.integration.conftest import deploy

KEY = b"x-api-key: " + TEST_API_KEY.encode() + b"\r\n"
SESSION = b"x-agentcell-session-id"

RAW_FN = textwrap.dedent(
    '''
    """Answers each request head with scripted raw bytes (keep-alive, one thread per connection);
    any other path gets {"path", "connections"}."""
    import json, os, socket, threading

    SCRIPT = {
        # a 204 with a Content-Length, then a second (partial) answer nobody asked for
        "/204-stray": b"HTTP/1.1 204 No Content\\r\\ncontent-length: 5\\r\\n\\r\\n"
        b"HTTP/1.1 200 OK\\r\\ncontent-length: 9\\r\\n\\r\\nSTRAY",
        # a Connection header naming the Content-Length of the body it sends
        "/conn-cl": b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\nconnection: content-length\\r\\n\\r\\nok",
    }
    CONNECTIONS = 0

    def endless_head(conn):
        try:
            conn.sendall(b"HTTP/1.1 200 OK\\r\\nx-endless: ")
            for _ in range(1024):
                conn.sendall(b"v" * 65536)
        except OSError:
            pass

    def serve(conn):
        buffer = b""
        while True:
            while b"\\r\\n\\r\\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\\r\\n\\r\\n")
            path = head.split(b" ")[1].decode()
            if path == "/endless-head":  # one header value of 64 MiB, and more to come
                return endless_head(conn)
            answer = SCRIPT.get(path)
            if answer is None:
                body = json.dumps({"path": path, "connections": CONNECTIONS}).encode()
                answer = b"HTTP/1.1 200 OK\\r\\ncontent-length: %d\\r\\n\\r\\n%s" % (len(body), body)
            conn.sendall(answer)
            # Like most servers, it reads a body it did not need after answering (to find the
            # next request), by the Content-Length it was given.
            lines = head.lower().split(b"\\r\\n")
            length = sum(int(line[15:]) for line in lines if line[:15] == b"content-length:")
            while len(buffer) < length:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            buffer = buffer[length:]

    listener = socket.create_server(("127.0.0.1", int(os.environ["PORT"])))
    while True:
        conn, _ = listener.accept()
        CONNECTIONS += 1
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    '''
)


def exchange(port: int, data: bytes, *, answers: int = 1, timeout_s: float = 30) -> list[bytes]:
    """Send `data` on a new connection; read `answers` complete responses (Content-Length framed,
    or closed by the server) and return them, each as head + body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        buffer, found = b"", list[bytes]()
        while len(found) < answers:
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    return [*found, buffer] if buffer else found
                buffer += chunk
            head, _, rest = buffer.partition(b"\r\n\r\n")
            length = (
                0
                if head.startswith((b"HTTP/1.1 204", b"HTTP/1.1 304"))
                else next(
                    (
                        int(line.split(b":")[1])
                        for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")
                    ),
                    0,
                )
            )
            while len(rest) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                rest += chunk
            found.append(head + b"\r\n\r\n" + rest[:length])
            buffer = rest[length:]
        return found


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body(answer: bytes) -> dict[str, object]:
    payload: dict[str, object] = json.loads(answer.partition(b"\r\n\r\n")[2])
    return payload


def get(fn: str, path: bytes, session: bytes) -> bytes:
    return b"GET /fn/%s%s HTTP/1.1\r\nHost: gw\r\n%s%s: %s\r\n\r\n" % (
        fn.encode(),
        path,
        KEY,
        SESSION,
        session,
    )


@pytest.fixture
def port(shared_server: ServerProcess) -> int:
    return shared_server.port


@pytest.fixture
def shared_echo(api: httpx.Client) -> Iterator[str]:
    """The echo function, four sessions to an instance."""
    name = "hunt-echo-" + uuid.uuid4().hex[:6]
    reply = deploy(api, name, {"cmd": "python3 app.py", "idle_timeout_s": 600, "sessions_per_instance": 4})
    assert reply.status_code == 200, reply.text
    yield name
    api.delete(f"/v1/functions/{name}")


@pytest.fixture
def raw_fn(api: httpx.Client, tmp_path: Path) -> Iterator[str]:
    code = tmp_path / "raw_fn"
    code.mkdir()
    (code / "app.py").write_text(RAW_FN)
    name = "hunt-raw-" + uuid.uuid4().hex[:6]
    config = {"cmd": "python3 app.py", "idle_timeout_s": 600, "sessions_per_instance": 4}
    reply = deploy(api, name, config, code=code)
    assert reply.status_code == 200, reply.text
    yield name
    api.delete(f"/v1/functions/{name}")


def test_connection_header_cannot_strip_a_request_content_length(port: int, shared_echo: str) -> None:
    """`Connection: content-length` used to drop the Content-Length on the way upstream while the
    body still went: the instance read the body as a second request, and its answer was given to
    the next request on that pooled connection, another session's."""
    victim = exchange(port, get(shared_echo, b"/whoami", b"victim"))[0]
    attacker = exchange(port, get(shared_echo, b"/whoami", b"attacker"))[0]
    assert body(victim)["instance"] == body(attacker)["instance"], "both sessions share one instance"
    smuggled = b"GET /slow?s=1 HTTP/1.1\r\nHost: gw\r\n\r\n"
    post = b"POST /fn/%s/echo HTTP/1.1\r\nHost: gw\r\n%s%s: attacker\r\nConnection: content-length\r\n" % (
        shared_echo.encode(),
        KEY,
        SESSION,
    )
    answer = exchange(port, post + b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled)[0]
    assert status(answer) == 200
    assert body(answer)["bytes"] == len(smuggled), "the instance got the body as a body"
    after = exchange(port, get(shared_echo, b"/whoami", b"victim"))[0]
    assert body(after)["path"] == "/whoami", f"the victim got another request's answer: {after!r}"


def test_connection_header_cannot_strip_a_response_content_length(port: int, raw_fn: str) -> None:
    """An upstream's `Connection: content-length` used to leave a kept-alive response with no
    framing at all: the client could not tell where it ended and the next one began."""
    answers = exchange(port, get(raw_fn, b"/conn-cl", b"a") + get(raw_fn, b"/after", b"a"), answers=2)
    head, _, rest = answers[0].partition(b"\r\n\r\n")
    assert b"content-length: 2" in head.lower() and rest == b"ok"
    assert body(answers[1])["path"] == "/after"


def test_bytes_after_an_answer_never_answer_the_next_request(port: int, raw_fn: str) -> None:
    """Bytes an upstream sends after a complete answer (a 204 with a body, a second response) used
    to stay in the pooled connection's parser and corrupt the answer to its next request."""
    answers = exchange(port, get(raw_fn, b"/204-stray", b"b") + get(raw_fn, b"/next", b"b"), answers=2)
    assert status(answers[0]) == 204
    assert b"content-length" not in answers[0].lower(), "a 204 carries no Content-Length"
    assert status(answers[1]) == 200 and body(answers[1])["path"] == "/next", answers[1]


def test_an_upgrade_request_with_a_body_is_refused(port: int, raw_fn: str) -> None:
    """What follows an upgrade head goes to the tunnel, not upstream as its body: the upstream
    got a head promising a body that never came, and (when it answered without upgrading, and
    the connection went back to the pool) read the next request, another session's, as that body."""
    assert status(exchange(port, get(raw_fn, b"/victim", b"victim"))[0]) == 200
    attacker = b"GET /fn/%s/x HTTP/1.1\r\nHost: gw\r\n%s%s: attacker\r\n" % (raw_fn.encode(), KEY, SESSION)
    upgrade = b"Connection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello"
    refused = exchange(port, attacker + upgrade)[0]
    assert status(refused) == 400 and b"connection: close" in refused.lower()
    victim = b"POST /fn/%s/victim HTTP/1.1\r\nHost: gw\r\n%s%s: victim\r\n" % (raw_fn.encode(), KEY, SESSION)
    answer = exchange(port, victim + b"Content-Length: 2\r\n\r\nhi")[0]
    assert body(answer)["path"] == "/victim", f"the victim's request reached the instance mangled: {answer!r}"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /fn/{fn}/x HTTP/1.1\r\n{key}", 400),  # no Host
        (b"GET /fn/{fn}/x HTTP/1.1\r\nHost: gw\r\nHost: other\r\n{key}", 400),
        (b"POST /fn/{fn}/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n{key}", 501),
        (b"GET /fn/{fn}/x HTTP/2.0\r\nHost: gw\r\n{key}", 505),
        (b"GET ftp://gw/fn/{fn}/x HTTP/1.1\r\nHost: gw\r\n{key}", 400),
    ],
    ids=["no-host", "two-hosts", "gzip-chunked", "http2-text", "ftp-target"],
)
def test_ambiguous_request_heads_are_refused(port: int, raw_fn: str, head: bytes, expected: int) -> None:
    request = head.replace(b"{fn}", raw_fn.encode()).replace(b"{key}", KEY) + b"\r\n"
    answer = exchange(port, request + b"3\r\nabc\r\n0\r\n\r\n")[0]
    assert status(answer) == expected, answer
    assert b"connection: close" in answer.lower()
    assert body(answer)["code"] == "invalid_argument"


def test_an_absolute_form_target_is_routed_by_its_authority(port: int, shared_echo: str) -> None:
    """`GET http://host/fn/x/...` (which servers must accept) used to reach the control plane as
    a path that is no path; now it is served as `/fn/x/...` with Host set to its authority."""
    request = b"GET http://gw.example:81/fn/%s/headers HTTP/1.1\r\nHost: ignored\r\n%s%s: abs\r\n\r\n" % (
        shared_echo.encode(),
        KEY,
        SESSION,
    )
    answer = exchange(port, request)[0]
    assert status(answer) == 200, answer
    seen = body(answer)
    assert seen["host"] == "gw.example:81" and seen["x-forwarded-host"] == "gw.example:81"


def rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status_file:
        line = next(line for line in status_file if line.startswith("VmRSS:"))
    return int(line.split()[1]) // 1024


def test_a_pipelining_client_holds_a_bounded_number_of_requests(shared_server: ServerProcess) -> None:
    """One read can hold thousands of small pipelined requests, and each became a queued exchange
    at once: 256 KiB sent (and not read back) held ~3 MiB of the server's memory per connection.
    Now a connection takes at most 64 queued requests, answers them, and closes."""
    tiny = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    flood = tiny * (256 * 1024 // len(tiny))
    before = rss_mib(shared_server.proc.pid)
    idle = []
    for _ in range(20):  # clients that never read
        sock = socket.create_connection(("127.0.0.1", shared_server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.send(flood)
        idle.append(sock)
    try:
        answers = exchange(shared_server.port, flood, answers=len(flood) // len(tiny))
        assert 1 < len(answers) <= 64 and all(status(answer) == 200 for answer in answers)
        assert b"connection: close" in answers[-1].lower()
        grown = rss_mib(shared_server.proc.pid) - before
        assert grown < 32, f"20 flooding clients grew the server by {grown} MiB"
    finally:
        for sock in idle:
            sock.close()


def test_endless_trailers_are_refused_not_buffered(shared_server: ServerProcess, shared_echo: str) -> None:
    """A chunked body's trailers were bounded by nothing: the parser held an endless trailer name
    (16 MiB sent: the server's memory grew with it, and its CPU with its square, stalling every
    other client of the gateway). Now they are bounded like a head."""
    post = (
        b"POST /fn/%s/echo HTTP/1.1\r\nHost: gw\r\n%s%s: trailers\r\nTransfer-Encoding: chunked\r\n\r\n"
        % (
            shared_echo.encode(),
            KEY,
            SESSION,
        )
    )
    before = rss_mib(shared_server.proc.pid)
    with socket.create_connection(("127.0.0.1", shared_server.port), timeout=10) as sock:
        sock.sendall(post + b"3\r\nabc\r\n0\r\n")
        with contextlib.suppress(OSError):  # (the server stops reading once it has answered)
            for _ in range(256):
                sock.sendall(b"X" * 65536)
        answer = sock.recv(65536)
    assert status(answer) == 400 and b"trailers exceed" in answer, answer
    assert rss_mib(shared_server.proc.pid) - before < 32


def test_an_endless_response_head_is_refused_not_buffered(shared_server: ServerProcess, raw_fn: str) -> None:
    """An instance could send a response head without end, and the gateway held it all, its CPU
    growing with the square of its size: 64 MiB stalled every client of the server for seconds.
    Now a head (or trailers) over 256 KiB ends the request with 502."""
    before = rss_mib(shared_server.proc.pid)
    started = time.monotonic()
    answer = exchange(shared_server.port, get(raw_fn, b"/endless-head", b"endless"))[0]
    assert status(answer) == 502, answer
    assert time.monotonic() - started < 5
    assert rss_mib(shared_server.proc.pid) - before < 32


def test_a_refused_upgrade_closes_its_connection(port: int) -> None:
    """A WebSocket handshake the gateway refused itself (no key, no such function), or a CONNECT,
    was answered as kept alive, but nothing more was ever read on that connection: the client's
    next request on it hung until the idle timeout. Now the refusal says `connection: close`."""
    upgrade = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    for request in (
        b"GET /fn/hunt-no-such-fn/ws HTTP/1.1\r\nHost: gw\r\n%s%s\r\n" % (KEY, upgrade),
        b"GET /fn/hunt-no-such-fn/ws HTTP/1.1\r\nHost: gw\r\n%s\r\n" % upgrade,
        b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(request)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert status(answer) in (401, 404, 405) and b"connection: close" in answer.lower(), answer
