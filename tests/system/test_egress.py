"""Network egress policy of process-tier sandboxes, end to end through the real driver: `none`
has no way out at all, `allowlist` reaches what it lists and nothing else (but the server's own port
at any of the host's addresses unless it names the address), `open` reaches the public internet
through the proxy and nothing of the node (test_egress_open_node.py has it reach an upstream). Every
server here is one the test starts, on the host's loopback or on addresses the test gives the host
for a moment."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from agentcell.protocol.egress import NetworkPolicy
from agentcell.server.egress.node import EgressConfig
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.sandbox.driver import SandboxSpec
from agentcell.server.sandbox.linux.driver import LinuxDriver
from tests.conftest import free_port
from tests.system.conftest import make_driver, node_leftovers, run

pytestmark = pytest.mark.system

VIA_PROXY = {"NO_PROXY": "", "no_proxy": ""}
"""the host's loopback is reached through the proxy (127.0.0.1 inside is the sandbox itself)"""
CURL = ["curl", "-sS", "--max-time", "10", "-w", "\\n%{http_code}"]
FAST_S = 4.0
"""a refusal comes at once; what it rules out takes longer than this (curl's --max-time 10, the
resolver's 5 s per try), with room for a loaded machine's slow process starts"""


def direct_probe(port: int) -> str:
    """Python that connects straight to a TEST-NET address (no proxy) and prints the errno."""
    connect = f"socket.create_connection(('192.0.2.1', {port}), timeout=30)"
    return f"import socket\ntry: {connect}\nexcept OSError as e: print(e.errno)"


class _Named(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.server.name}\n".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def host_servers() -> Iterator[tuple[int, int]]:
    """Two HTTP servers on the host's loopback, answering 'hello from one' / 'hello from two'."""
    servers = []
    for name in ("one", "two"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Named)
        server.name = name  # type: ignore[attr-defined]
        Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    try:
        yield servers[0].server_address[1], servers[1].server_address[1]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


async def start(driver: LinuxDriver, sandbox_id: str, egress: str, allow: list[str] | None = None) -> str:
    policy = EgressPolicy.from_wire(NetworkPolicy(egress=egress, allow=allow or []))
    await driver.start(SandboxSpec(sandbox_id=sandbox_id, egress=policy))
    return sandbox_id


async def curl(driver: LinuxDriver, sid: str, *args: str) -> tuple[str, str, float]:
    """(body, status code, seconds) of a curl through the sandbox's proxy settings."""
    started = time.monotonic()
    result = await run(driver, sid, [*CURL, *args], env=VIA_PROXY)
    elapsed = time.monotonic() - started
    body, _, code = result.stdout.rpartition("\n")
    return body + result.stderr, code, elapsed


async def test_none_has_no_proxy_no_route_and_no_names(
    linux_driver: LinuxDriver, host_servers: tuple[int, int]
) -> None:
    sid = await start(linux_driver, "egress-none", "none")
    env = await run(linux_driver, sid, ["env"])
    assert "HTTP_PROXY" not in env.stdout and "PIP_INDEX_URL" not in env.stdout
    body, code, elapsed = await curl(linux_driver, sid, f"http://127.0.0.1:{host_servers[0]}/")
    assert code == "000" and "hello" not in body and elapsed < FAST_S  # 127.0.0.1 is the sandbox's own
    started = time.monotonic()
    names = await run(linux_driver, sid, ["getent", "hosts", "localhost.example.com", "example.com"])
    assert names.code != 0 and names.stdout == "" and time.monotonic() - started < FAST_S
    started = time.monotonic()
    direct = await run(linux_driver, sid, ["python3", "-c", direct_probe(80)])
    assert direct.stdout.strip() == "101" and time.monotonic() - started < FAST_S  # ENETUNREACH


async def test_allowlist_reaches_what_it_lists_and_nothing_else(
    linux_driver: LinuxDriver, host_servers: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    one, two = host_servers
    sid = await start(linux_driver, "egress-allow", "allowlist", [f"127.0.0.1:{one}"])
    body, code, _ = await curl(linux_driver, sid, f"http://127.0.0.1:{one}/")
    assert (body, code) == ("hello from one\n", "200")
    with caplog.at_level(logging.WARNING, logger="agentcell.server.egress"):
        body, code, elapsed = await curl(linux_driver, sid, f"http://127.0.0.1:{two}/")
    assert code == "403" and elapsed < FAST_S
    assert f"egress to 127.0.0.1:{two} is denied" in body and f"allowlist (127.0.0.1:{one})" in body
    assert any(sid in r.getMessage() and str(two) in r.getMessage() for r in caplog.records)


async def test_allowlist_tunnels_connect_only_to_listed_places(
    linux_driver: LinuxDriver, host_servers: tuple[int, int]
) -> None:
    one, two = host_servers
    sid = await start(linux_driver, "egress-connect", "allowlist", [f"127.0.0.0/8:{one}"])
    body, code, _ = await curl(linux_driver, sid, "--proxytunnel", f"http://127.0.0.1:{one}/")
    assert (body, code) == ("hello from one\n", "200")
    body, code, elapsed = await curl(linux_driver, sid, "--proxytunnel", f"http://127.0.0.1:{two}/")
    assert "403" in body and elapsed < FAST_S


async def test_allowlist_checks_names_before_resolving_them(
    linux_driver: LinuxDriver, host_servers: tuple[int, int]
) -> None:
    one, _ = host_servers
    sid = await start(linux_driver, "egress-names", "allowlist", ["*.example.test", "localhost"])
    body, code, elapsed = await curl(linux_driver, sid, f"http://127.0.0.1:{one}/")
    assert code == "403" and elapsed < FAST_S
    # allowed by name, but the answer is the host's loopback: that needs the address listed
    body, code, _ = await curl(linux_driver, sid, f"http://localhost:{one}/")
    assert code == "403" and "resolves to 127.0.0.1" in body
    started = time.monotonic()
    direct = await run(linux_driver, sid, ["python3", "-c", direct_probe(443)])
    assert direct.stdout.strip() == "101" and time.monotonic() - started < FAST_S


async def test_open_does_not_reach_the_hosts_loopback(
    linux_driver: LinuxDriver, host_servers: tuple[int, int]
) -> None:
    one, two = host_servers
    sid = await start(linux_driver, "egress-open", "open")
    body, code, elapsed = await curl(linux_driver, sid, f"http://127.0.0.1:{one}/")
    assert code == "403" and "(loopback;" in body and elapsed < FAST_S, body
    body, _, _ = await curl(linux_driver, sid, "-p", f"http://localhost:{two}/")
    assert "hello" not in body and "response 403" in body, body
    # an allowlist naming the loopback address is how a host service is opened on purpose
    listed = await start(linux_driver, "egress-open-listed", "allowlist", [f"127.0.0.1:{one}"])
    assert (await curl(linux_driver, listed, f"http://127.0.0.1:{one}/"))[:2] == ("hello from one\n", "200")
    # the sandbox's own loopback stays its own (NO_PROXY), for servers it runs itself
    env = (await run(linux_driver, sid, ["sh", "-c", "echo $HTTPS_PROXY $NO_PROXY"])).stdout
    assert env == "http://127.0.0.1:3128 localhost,127.0.0.1,::1\n"


async def test_the_proxy_goes_away_with_the_sandbox(
    linux_driver: LinuxDriver, host_servers: tuple[int, int]
) -> None:
    sid = await start(linux_driver, "egress-stop", "open")
    assert linux_driver.egress.is_attached(sid)
    await linux_driver.stop(sid)
    assert not linux_driver.egress.is_attached(sid)


async def test_a_restarted_server_serves_the_adopted_sandbox_its_policy(
    linux_driver: LinuxDriver, prebuilt_helper: Path, host_servers: tuple[int, int]
) -> None:
    one, two = host_servers
    sid = await start(linux_driver, "egress-adopt", "allowlist", [f"127.0.0.1:{one}"])
    await assert_adopted_with_its_policy(linux_driver, prebuilt_helper, sid, (one, "one"), two)


async def assert_adopted_with_its_policy(
    driver: LinuxDriver, helper: Path, sid: str, reached: tuple[int, str], refused: int
) -> None:
    """A restarted server (the old one's listener died with it) adopts `sid`, whose proxy then
    reaches the host server `reached` (port, name) and refuses port `refused`."""
    await driver.egress.detach(sid)
    restarted = make_driver(driver.state_dir, helper)
    try:
        assert await restarted.adopt(sid) is True
        port, name = reached
        assert (await curl(restarted, sid, f"http://127.0.0.1:{port}/"))[:2] == (
            f"hello from {name}\n",
            "200",
        )
        assert (await curl(restarted, sid, f"http://127.0.0.1:{refused}/"))[1] == "403"
        await restarted.stop(sid)
    finally:
        await restarted.aclose()


HOST_V4 = "198.51.100.77"  # TEST-NET-2 and the IPv6 documentation prefix: never anyone else's
HOST_V6 = "2001:db8:ace1::77"


class _NamedV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@contextlib.contextmanager
def host_addresses() -> Iterator[None]:
    """Give this host two more addresses of its own, HOST_V4 and HOST_V6, on one end of a veth
    pair made here and removed after (both ends stay down: nothing outside the host sees them)."""
    link = f"acell{os.getpid() % 100000}"
    ip = ["ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p"]
    subprocess.run(ip, check=True, capture_output=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{HOST_V4}/32", "dev", link], check=True)
        subprocess.run(["ip", "addr", "add", f"{HOST_V6}/128", "dev", link, "nodad"], check=True)
        yield
    finally:
        subprocess.run(["ip", "link", "del", link], check=True)


@contextlib.contextmanager
def named_servers(*where: tuple[type[ThreadingHTTPServer], str, int]) -> Iterator[None]:
    """HTTP servers answering 'hello from <address>', one per (class, address, port)."""
    servers = []
    try:
        for server_class, address, port in where:
            server = server_class((address, port), _Named)
            server.name = address  # type: ignore[attr-defined]
            servers.append(server)
            Thread(target=server.serve_forever, daemon=True).start()
        yield
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


async def test_the_server_itself_is_refused_at_every_address_of_the_host(
    tmp_path: Path, prebuilt_helper: Path
) -> None:
    """A server bound to 0.0.0.0 answers on every interface, so its port is protected at each of
    the host's addresses, v4 and v6, even one added after the sandbox started; only an allow entry
    naming the address itself opens it. The same address on another port stays reachable."""
    api, other = free_port(), free_port()
    driver = make_driver(tmp_path / "state", prebuilt_helper, EgressConfig(protected_ports=(api,)))
    try:
        opened = await start(driver, "egress-host-open", "open")
        catch_all = await start(driver, "egress-host-all", "allowlist", ["0.0.0.0/0", "::/0"])
        named = await start(driver, "egress-host-named", "allowlist", [f"{HOST_V4}:{api}"])
        v4, v6 = f"http://{HOST_V4}:{api}/", f"http://[{HOST_V6}]:{api}/"
        with (
            host_addresses(),
            named_servers(
                (ThreadingHTTPServer, HOST_V4, api),
                (_NamedV6, HOST_V6, api),
                (ThreadingHTTPServer, HOST_V4, other),
            ),
        ):
            for sid in (opened, catch_all):
                for url in (v4, v6):
                    body, code, _ = await curl(driver, sid, "-g", url)
                    assert code == "403" and "the agentcell server itself" in body, (sid, url, body)
                body, code, _ = await curl(driver, sid, "-g", "--proxytunnel", v6)
                assert "403" in body, (sid, body)
            assert (await curl(driver, catch_all, f"http://{HOST_V4}:{other}/"))[:2] == (
                f"hello from {HOST_V4}\n",
                "200",
            )
            body, code, _ = await curl(driver, opened, f"http://{HOST_V4}:{other}/")  # open: not the host
            assert code == "403" and "an address of this host" in body, body
            assert (await curl(driver, named, v4))[:2] == (f"hello from {HOST_V4}\n", "200")
            assert (await curl(driver, named, "-g", v6))[1] == "403"
    finally:
        await driver.aclose()
    assert node_leftovers(driver) == []
