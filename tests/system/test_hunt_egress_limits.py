"""Hostile sandboxes against the egress proxy's shared resources, on a real server: however many
connections its sandboxes hold through their proxies, the server keeps file descriptors for its
own API and for new sandboxes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from agentcell.client import AsyncSandbox
from tests.conftest import AUTH, ServerProcess

pytestmark = pytest.mark.system

OPEN_FILES = 1024
"""the server's open-file limit in this test: small, so that a few sandboxes could exhaust it"""

HOLD = """
import socket, sys, time
held = []
for _ in range(int(sys.argv[2])):
    try:
        s = socket.create_connection(("127.0.0.1", 3128), timeout=5)
        s.sendall(b"CONNECT 127.0.0.1:%s HTTP/1.1\\r\\n\\r\\n" % sys.argv[1].encode())
        if not s.recv(100).startswith(b"HTTP/1.1 200"):
            break
        held.append(s)
    except OSError:
        break
open("/tmp/held", "w").write(str(len(held)))
time.sleep(600)
"""


class LimitedServer(ServerProcess):
    """A real server whose open-file limit is OPEN_FILES (set by prlimit before it starts)."""

    def __init__(self, state_dir: Path) -> None:
        limit = ["prlimit", f"--nofile={OPEN_FILES}:{OPEN_FILES}", "--"]
        keep = ["setpriv", "--bounding-set=-sys_resource", "--"]  # (a root server raises its own)
        super().__init__(state_dir, launcher=[*limit, *keep])


@pytest.fixture
def limited_server(tmp_path: Path) -> Iterator[LimitedServer]:
    server = LimitedServer(tmp_path / "state")
    limits = Path(f"/proc/{server.proc.pid}/limits").read_text().splitlines()
    assert any(line.startswith("Max open files") and f" {OPEN_FILES} " in line for line in limits)
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture
async def sink() -> AsyncIterator[int]:
    """A TCP server on the host's loopback that accepts everything and holds it open."""
    held: list[asyncio.StreamWriter] = []

    async def keep(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(keep, "127.0.0.1", 0, backlog=1024)
    async with server:
        yield server.sockets[0].getsockname()[1]
        for writer in held:
            writer.close()


async def held_count(sbx: AsyncSandbox) -> int:
    for _ in range(300):
        result = await sbx.commands.run(["cat", "/tmp/held"])
        if result.exit_code == 0 and result.stdout.strip():
            return int(result.stdout)
        await asyncio.sleep(0.1)
    raise AssertionError("the holding script did not report")


async def test_connections_held_by_sandboxes_cannot_starve_the_server(
    limited_server: LimitedServer, sink: int
) -> None:
    """Each sandbox may hold up to its per-sandbox cap of proxied connections (two server fds
    each), but all of them together stay within a share of the server's open-file limit, so the
    API still answers and a new sandbox still starts and runs."""
    url = limited_server.url
    sink_listed = {"egress": "allowlist", "allow": [f"127.0.0.1:{sink}"]}  # (`open` reaches no loopback)
    holders = [await AsyncSandbox.create(network=sink_listed, api_url=url) for _ in range(3)]
    try:
        counts = []
        for sbx in holders:
            await sbx.commands.run(["/usr/bin/python3", "-c", HOLD, str(sink), "250"], background=True)
            counts.append(await held_count(sbx))
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=20) as api:
            assert (await api.get("/healthz")).status_code == 200
        async with AsyncSandbox.create(api_url=url) as fresh:
            result = await fresh.commands.run(["echo", "still here"])
            assert result.stdout == "still here\n", result
        assert 0 < sum(counts) <= OPEN_FILES // 4, counts  # two descriptors each
    finally:
        for sbx in holders:
            with contextlib.suppress(Exception):  # a starved server may not answer: show why above
                await sbx.kill()
            await sbx.aclose()
