"""A stopped sandbox leaves nothing of its egress behind: the connections its proxy opened for it
close with it, even to an upstream that accepts and then never says a word (a tarpit), so that
neither the server's descriptors nor the node's connection budget leak sandbox after sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agentcell.protocol.egress import NetworkPolicy
from agentcell.server.egress.node import EgressConfig
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.sandbox.driver import SandboxSpec
from tests.system.conftest import make_driver, node_leftovers, run

pytestmark = pytest.mark.system

TUNNELS = 40
OPEN_AND_LEAVE = """
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(b"CONNECT 127.0.0.1:%s HTTP/1.1\\r\\n\\r\\n" % sys.argv[1].encode())
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    held.append(s)
for s in held:
    s.close()  # the sandbox's side goes away; the tarpit never answers nor closes
print(len(held))
"""


@dataclass
class Tarpit:
    port: int = 0
    accepted: list[asyncio.StreamReader] = field(default_factory=list)


def sockets_to(port: int) -> list[int]:
    """Inodes of the TCP sockets this process holds open whose remote end is 127.0.0.1:port."""
    remote = f"0100007F:{port:04X}"
    inodes = {
        fields[9]
        for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]
        if (fields := line.split())[2] == remote
    }
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held.append(int(target[8:-1]))
    return held


@pytest.fixture
async def tarpit() -> AsyncIterator[Tarpit]:
    """Accepts every connection and keeps it, reading (to see EOF) but never writing."""
    pit = Tarpit()
    writers: list[asyncio.StreamWriter] = []

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pit.accepted.append(reader)
        writers.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(keep, "127.0.0.1", 0)
    pit.port = server.sockets[0].getsockname()[1]
    async with server:
        yield pit
        for writer in writers:
            writer.close()


async def test_a_stopped_sandbox_leaves_no_upstream_connection_open(
    tmp_path: Path, prebuilt_helper: Path, tarpit: Tarpit
) -> None:
    """A sandbox opens 40 tunnels to a tarpit and closes its ends; once the sandbox is stopped,
    every upstream connection is closed too and the node's connection count is back to zero."""
    driver = make_driver(tmp_path / "state", prebuilt_helper, EgressConfig())
    try:
        listed = NetworkPolicy(egress="allowlist", allow=[f"127.0.0.1:{tarpit.port}"])
        await driver.start(SandboxSpec(sandbox_id="hunt-tarpit", egress=EgressPolicy.from_wire(listed)))
        opened = await run(
            driver, "hunt-tarpit", ["python3", "-c", OPEN_AND_LEAVE, str(tarpit.port), str(TUNNELS)]
        )
        assert opened.stdout.strip() == str(TUNNELS), opened
        assert len(sockets_to(tarpit.port)) == TUNNELS  # (the proxy's upstream ends, in this process)
        await driver.stop("hunt-tarpit")
        leaked = sockets_to(tarpit.port)
        assert leaked == [], f"{len(leaked)} upstream connections outlived the sandbox"
        assert driver.egress.open_connections == 0
    finally:
        await driver.aclose()
    assert node_leftovers(driver) == []
