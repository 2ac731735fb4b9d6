"""DNS rebinding onto the host, from inside a real sandbox on a real server: a name an allowlist
lets through must not lead to any address of the host itself (its other interfaces answer for
every host service bound to 0.0.0.0, like loopback does) unless that address is listed.

The server runs in a mount namespace of its own whose /etc/hosts maps the test's names, so the
host's real resolver answers them without touching the machine's /etc/hosts."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from agentcell.client import AsyncSandbox
from tests.conftest import ServerProcess, free_port
from tests.system.test_egress import HOST_V4, HOST_V6, host_addresses, named_servers

pytestmark = pytest.mark.system

VIA_PROXY = {"NO_PROXY": "", "no_proxy": ""}
HOSTS = f"""127.0.0.1 localhost
{HOST_V4} rebind-v4.hunt.test
{HOST_V6} rebind-v6.hunt.test
"""
MOUNT_HOSTS = 'mount --bind "$0" /etc/hosts && exec "$@"'
MOUNT_BOTH = 'mount --bind "$0" /etc/hosts && mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'


class ResolvingServer(ServerProcess):
    """A real server whose resolver reads `hosts` as /etc/hosts and, if given, `resolv_conf` as
    /etc/resolv.conf (private bind mounts)."""

    def __init__(self, state_dir: Path, hosts: Path, resolv_conf: Path | None = None) -> None:
        unshare = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
        if resolv_conf is None:
            unshare += [MOUNT_HOSTS, str(hosts)]
        else:
            unshare += [MOUNT_BOTH, str(hosts), str(resolv_conf)]
        super().__init__(state_dir, launcher=unshare)


@pytest.fixture
def resolving_server(tmp_path: Path) -> Iterator[ResolvingServer]:
    hosts = tmp_path / "hosts"
    hosts.write_text(HOSTS)
    server = ResolvingServer(tmp_path / "state", hosts)
    yield server
    assert server.stop() == 0, server.log()


class _V6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


async def curl(sbx: AsyncSandbox, *args: str) -> str:
    result = await sbx.commands.run(["curl", "-sS", "-g", "--max-time", "10", *args], env=VIA_PROXY)
    return result.stdout + result.stderr


async def test_an_allowed_name_that_resolves_to_the_host_is_refused(
    resolving_server: ResolvingServer,
) -> None:
    """`*.hunt.test` is allowed, and its names resolve to addresses of this host (not loopback):
    the proxy refuses them (403, naming the address), as it does for names that resolve to
    loopback. Listing the address itself opens it."""
    port = free_port()
    v4, v6 = f"http://rebind-v4.hunt.test:{port}/", f"http://rebind-v6.hunt.test:{port}/"
    by_name = {"egress": "allowlist", "allow": ["*.hunt.test"]}
    listed = {"egress": "allowlist", "allow": ["*.hunt.test", f"{HOST_V4}:{port}"]}
    with host_addresses(), named_servers((ThreadingHTTPServer, HOST_V4, port), (_V6Server, HOST_V6, port)):
        async with AsyncSandbox.create(network=by_name, api_url=resolving_server.url) as sbx:
            for url, address in ((v4, HOST_V4), (v6, HOST_V6)):
                for how in ((), ("--proxytunnel",)):
                    reply = await curl(sbx, *how, url)
                    assert "hello from" not in reply, (url, how, reply)
                    assert (
                        f"resolves to {address}" in reply or "CONNECT tunnel failed, response 403" in reply
                    ), reply
        async with AsyncSandbox.create(network=listed, api_url=resolving_server.url) as sbx:
            assert await curl(sbx, v4) == f"hello from {HOST_V4}\n"
