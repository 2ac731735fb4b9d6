"""Egress `open` means the public internet, not the node, end to end through real sandboxes: an
upstream at a TEST-NET-3 address, in a network namespace of the test's own reached over a veth
pair, answers; the host's loopback (by address in any spelling, or by a name resolving there), the
cloud metadata address, a private network and the host's own veth address are refused with a 403
naming why. An allowlist naming a loopback or host address still reaches it. And a server started
with `--port 0` protects the port it really listens on."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from agentcell.client import AsyncSandbox
from agentcell.server.egress.node import EgressConfig
from tests.conftest import TEST_API_KEY, ServerProcess, free_port
from tests.system.conftest import make_driver, node_leftovers
from tests.system.test_egress import FAST_S, curl, named_servers, start

pytestmark = pytest.mark.system

HOST_END = "203.0.113.1"  # TEST-NET-3: the host's end of the veth pair (an address of the host)
UPSTREAM = "203.0.113.2"  # the far end, in the test's namespace: not the host, not private
UPSTREAM_PORT = 8080
SERVE = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello from upstream\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Hello).serve_forever()
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextlib.contextmanager
def upstream_namespace() -> Iterator[None]:
    """A network namespace holding UPSTREAM, joined to the host by a veth pair whose host end is
    HOST_END/24, with an HTTP server on UPSTREAM:UPSTREAM_PORT saying 'hello from upstream'."""
    tag = os.getpid() % 100000
    namespace, link = f"acell-up{tag}", f"acellu{tag}"
    ip("netns", "add", namespace)
    server: subprocess.Popen[bytes] | None = None
    try:
        ip("link", "add", link, "type", "veth", "peer", "name", f"{link}p", "netns", namespace)
        ip("addr", "add", f"{HOST_END}/24", "dev", link)
        ip("link", "set", link, "up")
        ip("-n", namespace, "addr", "add", f"{UPSTREAM}/24", "dev", f"{link}p")
        ip("-n", namespace, "link", "set", f"{link}p", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        command = [sys.executable, "-c", SERVE, UPSTREAM, str(UPSTREAM_PORT)]
        server = subprocess.Popen(["ip", "netns", "exec", namespace, *command])
        _wait_listening(UPSTREAM, UPSTREAM_PORT)
        yield
    finally:
        if server is not None:
            server.kill()
            server.wait()
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("link", "del", link)  # (its peer goes with it)
        ip("netns", "del", namespace)


def _wait_listening(host: str, port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def test_open_reaches_the_internet_but_not_the_node(tmp_path: Path, prebuilt_helper: Path) -> None:
    port = free_port()
    driver = make_driver(tmp_path / "state", prebuilt_helper, EgressConfig(connect_timeout_s=5))
    try:
        sid = await start(driver, "open-node", "open")
        with (
            upstream_namespace(),
            named_servers((ThreadingHTTPServer, "127.0.0.1", port), (ThreadingHTTPServer, HOST_END, port)),
        ):
            for how in ((), ("--proxytunnel",)):
                body, code, _ = await curl(driver, sid, *how, f"http://{UPSTREAM}:{UPSTREAM_PORT}/")
                assert (body, code) == ("hello from upstream\n", "200"), how
            refused = {
                f"http://127.0.0.1:{port}/": "(loopback;",
                f"http://[::ffff:127.0.0.1]:{port}/": "that is 127.0.0.1, loopback",
                f"http://2130706433:{port}/": "loopback",  # (curl itself sends it as 127.0.0.1)
                f"http://localhost:{port}/": "it resolves to 127.0.0.1, loopback",
                f"http://{HOST_END}:{port}/": "an address of this host",
                "http://169.254.169.254/latest/meta-data/": "link-local, where the cloud metadata",
                "http://10.20.30.40/": "a private network, 10.0.0.0/8",
                "http://[fd00::1]/": "a private network, fc00::/7",
            }
            for url, why in refused.items():
                for how in ((), ("--proxytunnel",)):
                    body, code, elapsed = await curl(driver, sid, "-g", *how, url)
                    assert "hello from" not in body, (url, how, body)
                    assert elapsed < FAST_S, (url, how, elapsed)  # refused before any connect
                    if how:
                        assert "CONNECT tunnel failed, response 403" in body, (url, body)
                    else:
                        assert code == "403" and why in body, (url, body)
                        assert "'open' reaches the public internet only" in body, body
    finally:
        await driver.aclose()
    assert node_leftovers(driver) == []


async def test_an_allowlist_naming_a_node_address_reaches_it(tmp_path: Path, prebuilt_helper: Path) -> None:
    port = free_port()
    driver = make_driver(tmp_path / "state", prebuilt_helper)
    try:
        listed = [f"127.0.0.1:{port}", f"{HOST_END}:{port}"]
        sid = await start(driver, "open-listed", "allowlist", listed)
        with (
            upstream_namespace(),
            named_servers((ThreadingHTTPServer, "127.0.0.1", port), (ThreadingHTTPServer, HOST_END, port)),
        ):
            for address in ("127.0.0.1", HOST_END):
                assert (await curl(driver, sid, f"http://{address}:{port}/"))[:2] == (
                    f"hello from {address}\n",
                    "200",
                )
            assert (await curl(driver, sid, f"http://{UPSTREAM}:{UPSTREAM_PORT}/"))[1] == "403"
    finally:
        await driver.aclose()
    assert node_leftovers(driver) == []


class PortZeroServer(ServerProcess):
    """`agentcell serve --port 0`: the port it listens on is read from its log."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.log_path = state_dir.parent / "server-port-0.log"
        self._log = self.log_path.open("wb")
        command = [sys.executable, "-m", "agentcell.server", "--port", "0", "--state-dir", str(state_dir)]
        self.proc = subprocess.Popen(
            [*command, "--driver", "linux"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "AGENTCELL_ADMIN_KEY": TEST_API_KEY},
        )
        self.port = self._listening_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_ready()

    def _listening_port(self, timeout_s: float = 30) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(r"listening on \[\('127\.0\.0\.1', (\d+)\)", self.log_path.read_text())
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the server did not say where it listens:\n{self.log()}")


@pytest.fixture
def port_zero_server(tmp_path: Path) -> Iterator[PortZeroServer]:
    server = PortZeroServer(tmp_path / "state")
    yield server
    assert server.stop() == 0, server.log()


async def test_a_server_on_port_zero_protects_the_port_it_listens_on(
    port_zero_server: PortZeroServer,
) -> None:
    """A catch-all allowlist reaches any loopback service but the server's own API, whose port
    a server started with `--port 0` learns only once it listens."""
    other = free_port()
    catch_all = {"egress": "allowlist", "allow": ["0.0.0.0/0"]}
    with named_servers((ThreadingHTTPServer, "127.0.0.1", other)):
        async with AsyncSandbox.create(network=catch_all, api_url=port_zero_server.url) as sbx:
            env = {"NO_PROXY": "", "no_proxy": ""}
            curl_ = ["curl", "-sS", "--max-time", "10"]
            reached = await sbx.commands.run([*curl_, f"http://127.0.0.1:{other}/"], env=env)
            assert reached.stdout == "hello from 127.0.0.1\n", reached
            api = f"http://127.0.0.1:{port_zero_server.port}/v1/sandboxes"
            for how in ([], ["-p"]):
                result = await sbx.commands.run([*curl_, *how, api], env=env)
                reply = result.stdout + result.stderr
                assert "request_id" not in reply, (how, reply)  # no answer of the API's
                assert "the agentcell server itself" in reply or "response 403" in reply, (how, reply)
