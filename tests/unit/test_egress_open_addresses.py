"""Egress `open` reaches the public internet, not the node: through a real proxy, every spelling
of an address of loopback, link-local, multicast, a private network or the host itself is refused
with the usual 403 naming why, before any connection is tried; an allowlist naming such an address
still reaches it."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator

import pytest

from agentcell.protocol.egress import NetworkPolicy
from agentcell.server.egress.internal import internal_reason
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.egress.proxy import EgressProxy
from tests.unit.test_egress_policy_proxy import ask, proxy_for


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()
    writer.close()


@pytest.fixture
async def origin_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(answer_ok, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def open_proxy(policy: NetworkPolicy) -> tuple[EgressProxy, int]:
    return await proxy_for(EgressPolicy.from_wire(policy), "sbx_open", connect_timeout_s=2.0)


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", b"(loopback;"),
        ("127.9.9.9", b"(loopback;"),
        ("[::1]", b"(loopback;"),
        ("[::ffff:127.0.0.1]", b"that is 127.0.0.1, loopback"),
        ("[::ffff:7f00:1]", b"that is 127.0.0.1, loopback"),
        ("2130706433", b"it resolves to 127.0.0.1, loopback"),  # decimal, as inet_aton reads it
        ("127.1", b"it resolves to 127.0.0.1, loopback"),
        ("0x7f.0.0.1", b"it resolves to 127.0.0.1, loopback"),
        ("localhost", b"it resolves to 127.0.0.1, loopback"),
        ("0.0.0.0", b"the unspecified address"),
        ("[::]", b"the unspecified address"),
        ("169.254.169.254", b"link-local, where the cloud metadata service answers"),
        ("[::ffff:169.254.169.254]", b"link-local"),
        ("[fe80::1]", b"link-local"),
        ("224.0.0.1", b"multicast"),
        ("10.1.2.3", b"a private network, 10.0.0.0/8"),
        ("[::ffff:10.1.2.3]", b"a private network, 10.0.0.0/8"),
        ("172.16.5.5", b"a private network, 172.16.0.0/12"),
        ("192.168.1.1", b"a private network, 192.168.0.0/16"),
        ("100.64.0.1", b"a private network, 100.64.0.0/10"),
        ("[fd00::1]", b"a private network, fc00::/7"),
        ("[64:ff9b::a01:203]", b"a private network, 10.0.0.0/8"),  # NAT64 of 10.1.2.3
        ("[2002:a01:203::1]", b"a private network, 10.0.0.0/8"),  # 6to4 of 10.1.2.3
    ],
)
async def test_open_refuses_the_node_and_its_neighbours(origin_port: int, host: str, why: bytes) -> None:
    proxy, port = await open_proxy(NetworkPolicy(egress="open"))
    try:
        for request in (
            f"GET http://{host}:{origin_port}/ HTTP/1.1\r\nHost: x\r\n\r\n",
            f"CONNECT {host}:{origin_port} HTTP/1.1\r\n\r\n",
        ):
            reply = await ask(port, request)
            assert reply.startswith(b"HTTP/1.1 403 "), reply
            assert b"X-Agentcell-Egress: denied" in reply and why in reply, reply
            assert b"'open' reaches the public internet only" in reply, reply
            assert b"network policy: open" in reply, reply
        assert proxy.open_connections == 0
    finally:
        await proxy.aclose()


async def test_an_allowlist_naming_loopback_still_reaches_it(origin_port: int) -> None:
    for allow in (f"127.0.0.1:{origin_port}", "127.0.0.0/8", "127.0.0.1"):
        proxy, port = await open_proxy(NetworkPolicy(egress="allowlist", allow=[allow]))
        try:
            reply = await ask(port, f"GET http://127.0.0.1:{origin_port}/ HTTP/1.1\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"ok"), (allow, reply)
        finally:
            await proxy.aclose()


@pytest.mark.parametrize("address", ["198.51.100.7", "203.0.113.9", "8.8.8.8", "2001:db8::1", "2606:4700::1"])
def test_public_addresses_are_not_internal(address: str) -> None:
    assert internal_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("request_text", "why"),
    [
        ("GET http://203.0.113.9/ HTTP/1.1\r\nHost: x\r\n\r\n", b"egress to 203.0.113.9:80 is denied"),
        ("CONNECT 203.0.113.9:443 HTTP/1.1\r\n\r\n", b"egress to 203.0.113.9:443 is denied"),
        ("CONNECT 0xcb.0.113.9:443 HTTP/1.1\r\n\r\n", b"(that is 203.0.113.9, in a deny entry)"),
        ("CONNECT [::ffff:203.0.113.9]:443 HTTP/1.1\r\n\r\n", b"egress to ::ffff:203.0.113.9:443 is denied"),
        ("CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n", b"egress to 2001:db8::1:443 is denied"),
    ],
)
async def test_open_refuses_its_deny_entries_however_spelled(request_text: str, why: bytes) -> None:
    """(Documentation addresses: had a request been let through, it would have gone nowhere.)"""
    proxy, port = await open_proxy(NetworkPolicy(egress="open", deny=["203.0.113.0/24", "[2001:db8::1]:443"]))
    try:
        reply = await ask(port, request_text)
        assert reply.startswith(b"HTTP/1.1 403 ") and why in reply, reply
        assert b"network policy: open (except 203.0.113.0/24, [2001:db8::1]:443)" in reply, reply
        assert proxy.open_connections == 0
    finally:
        await proxy.aclose()
