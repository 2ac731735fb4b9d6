"""The gateway's limits on the real server, over raw sockets: caps on client connections (in all
and per address) and the request-head timeout (slowloris).

Past a cap a new connection is answered 503 and closed, while the connections already open keep
working, and new ones are admitted again once some close. A head that trickles in gets 408 once
its time is up, while a head that is complete in time (even if sent in pieces) is served.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ServerFactory, ServerProcess

HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length framed response: (status, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside a response body")
        body += chunk
    return int(lines[0].split()[1]), headers, body[:length]


def is_closed(sock: socket.socket) -> bool:
    """Whether the server closed this connection (EOF or reset) once what it sent was read."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def head_timeout_connection(server_factory: ServerFactory, sockets: list[socket.socket]) -> socket.socket:
    """A connection to a new server whose request heads time out after 1 s (closed by `sockets`)."""
    server = server_factory(driver="fake", env={"AGENTCELL_HEADER_TIMEOUT_S": "1"})
    sock = connect(server)
    sockets.append(sock)
    return sock


def health(sock: socket.socket) -> int:
    sock.sendall(HEALTH)
    return read_response(sock)[0]


def assert_refused(sock: socket.socket) -> None:
    """The server answered this new connection 503 (unasked) and closed it."""
    status, headers, body = read_response(sock)
    assert status == 503
    assert headers["retry-after"] == "1"
    assert json.loads(body)["code"] == "unavailable"
    assert is_closed(sock)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def wait_admitted(server: ServerProcess, timeout_s: float = 5.0) -> socket.socket:
    """A new connection that is served (a closed connection leaves the count on the server's next
    turn, so the first try may still be refused)."""
    deadline = time.monotonic() + timeout_s
    while True:
        sock = connect(server)
        try:
            if health(sock) == 200:
                return sock
        except ConnectionError:
            pass
        sock.close()
        assert time.monotonic() < deadline, "no connection was admitted again after others closed"
        time.sleep(0.05)


def test_connections_past_the_cap_get_503_while_open_ones_keep_working(
    server_factory: ServerFactory, sockets: list[socket.socket]
) -> None:
    server = server_factory(driver="fake", env={"AGENTCELL_MAX_CONNECTIONS": "4"})
    sockets += [connect(server) for _ in range(4)]
    assert [health(sock) for sock in sockets] == [200] * 4
    for _ in range(3):
        with contextlib.closing(connect(server)) as extra:
            assert_refused(extra)
    # the open connections were not disturbed: each serves more requests
    assert [health(sock) for sock in sockets] == [200] * 4
    sockets.pop().close()
    sockets.append(wait_admitted(server))
    with contextlib.closing(connect(server)) as extra:
        assert_refused(extra)


def test_connections_per_address_are_capped(
    server_factory: ServerFactory, sockets: list[socket.socket]
) -> None:
    server = server_factory(driver="fake", env={"AGENTCELL_MAX_CONNECTIONS_PER_CLIENT": "3"})
    sockets += [connect(server) for _ in range(3)]
    assert [health(sock) for sock in sockets] == [200] * 3
    with contextlib.closing(connect(server)) as extra:
        assert_refused(extra)
    assert health(sockets[0]) == 200
    sockets.pop().close()
    sockets.append(wait_admitted(server))


def test_per_address_cap_of_zero_is_off(server_factory: ServerFactory, sockets: list[socket.socket]) -> None:
    server = server_factory(
        driver="fake", env={"AGENTCELL_MAX_CONNECTIONS_PER_CLIENT": "0", "AGENTCELL_MAX_CONNECTIONS": "50"}
    )
    sockets += [connect(server) for _ in range(30)]
    assert [health(sock) for sock in sockets] == [200] * 30


def test_a_slowloris_head_gets_408_after_the_header_timeout(
    server_factory: ServerFactory, sockets: list[socket.socket]
) -> None:
    slow = head_timeout_connection(server_factory, sockets)
    started = time.monotonic()
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    sent = 0
    slow.settimeout(0.3)
    status = 0
    while time.monotonic() - started < 10:
        try:
            slow.sendall(b"x-slow-%d: v\r\n" % sent)  # a header every 0.3 s, never the end
            sent += 1
            status, headers, body = read_response(slow)
            break
        except TimeoutError:
            continue
    elapsed = time.monotonic() - started
    assert status == 408, f"no 408 within {elapsed:.1f} s"
    assert json.loads(body)["code"] == "timeout"
    assert headers["connection"] == "close"
    assert 0.9 <= elapsed < 10  # after the head timeout, long before the 75 s keep-alive one
    slow.settimeout(10)
    assert is_closed(slow)


def test_a_method_trickling_in_also_times_out(
    server_factory: ServerFactory, sockets: list[socket.socket]
) -> None:
    slow = head_timeout_connection(server_factory, sockets)
    started = time.monotonic()
    slow.sendall(b"GE")
    status, _, _ = read_response(slow)
    assert status == 408
    assert time.monotonic() - started < 10  # the head timeout, not the 75 s keep-alive one


def test_heads_complete_in_time_are_served_and_keep_alive_idling_is_untouched(
    server_factory: ServerFactory, sockets: list[socket.socket]
) -> None:
    sock = head_timeout_connection(server_factory, sockets)
    for _ in range(2):
        # idle longer than the head timeout (a keep-alive wait, no head begun): still open
        time.sleep(1.5)
        # a head in three pieces, complete well within its time
        for piece in (b"GET /healthz HT", b"TP/1.1\r\nHost: x\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(0.2)
        assert read_response(sock)[0] == 200


def test_a_head_unfinished_behind_a_request_gets_its_time_once_that_is_answered(
    server_factory: ServerFactory, sockets: list[socket.socket]
) -> None:
    sock = head_timeout_connection(server_factory, sockets)
    sock.sendall(HEALTH + b"GET /healthz HTTP/1.1\r\nHo")  # a request, then half of the next
    assert read_response(sock)[0] == 200
    answered = time.monotonic()
    status, _, body = read_response(sock)
    assert status == 408
    assert json.loads(body)["code"] == "timeout"
    assert 0.9 <= time.monotonic() - answered < 10  # its own 1 s, not the 75 s keep-alive one
    assert is_closed(sock)
