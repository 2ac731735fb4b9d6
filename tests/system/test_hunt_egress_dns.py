"""Slow name lookups from one sandbox against everyone else's, on a real server whose resolver
asks a name server that never answers (a UDP socket the test holds on the host's loopback): a
sandbox that asks its proxy for many such names must not hold up the lookups of other sandboxes.

The server runs in a mount namespace of its own with its own /etc/hosts and /etc/resolv.conf."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from agentcell.client import AsyncSandbox
from tests.conftest import free_port
from tests.system.test_egress import named_servers
from tests.system.test_hunt_egress_rebind import ResolvingServer

pytestmark = pytest.mark.system

SILENT_DNS = "127.77.0.1"
"""where the server's resolver asks: a socket that reads every query and answers none"""
SLOW_LOOKUPS = 48
VIA_PROXY = {"NO_PROXY": "", "no_proxy": ""}


@pytest.fixture
def silent_dns() -> Iterator[None]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((SILENT_DNS, 53))
    try:
        yield
    finally:
        sock.close()


@pytest.fixture
def slow_dns_server(tmp_path: Path, silent_dns: None) -> Iterator[ResolvingServer]:
    hosts, resolv = tmp_path / "hosts", tmp_path / "resolv.conf"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 fast.hunt.test\n")
    resolv.write_text(f"nameserver {SILENT_DNS}\noptions timeout:5 attempts:2\n")
    server = ResolvingServer(tmp_path / "state", hosts, resolv)
    yield server
    assert server.stop() == 0, server.log()


SLOW_CONNECTS = """
import socket, sys
held = []
for i in range(int(sys.argv[1])):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(b"CONNECT n%d.slow.hunt.test:443 HTTP/1.1\\r\\n\\r\\n" % i)
    held.append(s)
print(len(held), flush=True)
for s in held:
    s.recv(100)
"""


async def test_one_sandbox_slow_lookups_do_not_stall_another_sandbox(
    slow_dns_server: ResolvingServer,
) -> None:
    """Sandbox A asks its proxy for 48 names that take 10 s each to fail; meanwhile sandbox B's
    name (answered at once from /etc/hosts) still resolves and connects at once."""
    port = free_port()
    url = slow_dns_server.url
    # every name of the test's domain, and the loopback server its fast name leads to
    policy = {"egress": "allowlist", "allow": ["*.hunt.test", f"127.0.0.1:{port}"]}
    with named_servers((ThreadingHTTPServer, "127.0.0.1", port)):
        async with (
            AsyncSandbox.create(network=policy, api_url=url) as hostile,
            AsyncSandbox.create(network=policy, api_url=url) as victim,
        ):
            slow = await hostile.commands.run(
                ["/usr/bin/python3", "-c", SLOW_CONNECTS, str(SLOW_LOOKUPS)], background=True
            )
            await asyncio.sleep(1.0)  # all of A's lookups are under way
            started = time.monotonic()
            reply = await victim.commands.run(
                ["curl", "-sS", "--max-time", "4", f"http://fast.hunt.test:{port}/"], env=VIA_PROXY
            )
            took = time.monotonic() - started
            await slow.kill()
    # curl's --max-time 4 is the bound: queued behind A's lookups (5 s each, twice) it fails
    assert reply.stdout == "hello from 127.0.0.1\n", (reply, took)
