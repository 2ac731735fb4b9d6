"""Hostile requests against a real egress proxy on the host's loopback (no namespaces): bytes that
could forge the server's log or smuggle headers are refused before any policy decision, and ports
protected after the proxy started are protected at once."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator

import pytest

from agentcell.protocol.egress import NetworkPolicy
from agentcell.server.clock import FakeClock
from agentcell.server.egress.denials import DENIALS_LOGGED, DENIALS_WINDOW_S
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.egress.proxy import EgressProxy
from tests.unit.test_egress_policy_proxy import ask, proxy_for


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    await writer.drain()
    writer.close()


@pytest.fixture
async def origin_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(answer_ok, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[EgressProxy, int]]:
    policy = EgressPolicy.from_wire(NetworkPolicy(egress="allowlist", allow=["*.example.test"]))
    egress, port = await proxy_for(policy, "sbx_hunt")
    yield egress, port
    await egress.aclose()


async def catch_all_proxy() -> tuple[EgressProxy, int]:
    """A proxy whose allowlist is every IPv4 address: loopback too, but not the protected ports."""
    return await proxy_for(
        EgressPolicy.from_wire(NetworkPolicy(egress="allowlist", allow=["0.0.0.0/0"])), "sbx_all"
    )


@pytest.mark.parametrize(
    "request_head",
    [
        b"CONNECT a\nWARNING:FORGED-line:443 HTTP/1.1\r\n\r\n",
        b"CONNECT a\x1b[2Jb.example.test:443 HTTP/1.1\r\n\r\n",
        b"GET http://a.example.test/\nX-Forged: 1 HTTP/1.1\r\n\r\n",
        b"GET http://a.example.test/ HTTP/1.1\r\nHost: a.example.test\nX-Smuggled: 1\r\n\r\n",
        b"GET http://a.example.test/ HTTP/1.1\r\nX-Nul: a\x00b\r\n\r\n",
    ],
)
async def test_control_characters_are_refused_before_the_policy_and_never_logged(
    proxy: tuple[EgressProxy, int], request_head: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A request line or header with a control character (a bare LF, ESC, NUL) is not HTTP: it
    gets 400, and nothing the sandbox wrote reaches the server's log."""
    with caplog.at_level(logging.DEBUG, logger="agentcell.server.egress"):
        reply = await ask(proxy[1], request_head)
    assert reply.startswith(b"HTTP/1.1 400 "), reply
    assert b"control character" in reply
    for record in caplog.records:
        message = record.getMessage()
        assert "FORGED" not in message and "\n" not in message and "\x1b" not in message, message


async def test_ports_protected_after_the_start_are_refused_at_once(origin_port: int) -> None:
    """A server started on port 0 knows its own port only once it listens: `protect` from then
    on refuses that port at the host's own addresses, even to a catch-all allowlist."""
    egress, port = await catch_all_proxy()
    try:
        request = f"GET http://127.0.0.1:{origin_port}/ HTTP/1.1\r\n\r\n".encode()
        assert (await ask(port, request)).endswith(b"ok")
        egress.protect([origin_port])
        reply = await ask(port, request)
        assert reply.startswith(b"HTTP/1.1 403 ") and b"the agentcell server itself" in reply
    finally:
        await egress.aclose()


async def test_a_flood_of_denials_logs_a_few_lines_and_then_a_count(caplog: pytest.LogCaptureFixture) -> None:
    """Every denial is answered (403), but a sandbox that asks for denied places in a loop gets
    at most DENIALS_LOGGED lines per window into the server's log; the next line after the
    window says how many were left out."""
    clock = FakeClock()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    egress = EgressProxy(clock=clock)
    policy = EgressPolicy.from_wire(NetworkPolicy(egress="allowlist", allow=["*.example.test"]))
    await egress.serve("sbx_flood", policy, listener)
    port = listener.getsockname()[1]
    try:
        with caplog.at_level(logging.WARNING, logger="agentcell.server.egress"):
            for i in range(100):
                reply = await ask(port, f"CONNECT 10.9.8.{i}:443 HTTP/1.1\r\n\r\n".encode())
                assert reply.startswith(b"HTTP/1.1 403 ")
            assert len(caplog.records) == DENIALS_LOGGED
            clock.advance(DENIALS_WINDOW_S)
            await ask(port, b"CONNECT 10.9.9.9:443 HTTP/1.1\r\n\r\n")
        last = caplog.records[-1].getMessage()
        assert "sbx_flood" in last and "10.9.9.9:443" in last
        assert f"{100 - DENIALS_LOGGED} more denials not logged" in last, last
    finally:
        await egress.aclose()
