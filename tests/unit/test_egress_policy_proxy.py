"""The egress proxy and the package mirrors' pieces, on the host's loopback (no namespaces): what
a sandbox's client sees for allowed, denied, malformed and unreachable requests."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.protocol.egress import NetworkPolicy
from agentcell.server.egress.cache import Artifact, ArtifactCache
from agentcell.server.egress.fetch import Fetcher, FetchError
from agentcell.server.egress.hostaddr import is_host_address
from agentcell.server.egress.npm import integrity_artifact
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.egress.proxy import EgressProxy
from agentcell.server.egress.pypi import normalize, parse_links, render_page


async def origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A tiny origin server: answers every request with its own request line, then closes."""
    head = await reader.readuntil(b"\r\n\r\n")
    body = head.split(b"\r\n")[0] + b"|" + (b"close" if b"Connection: close" in head else b"keep")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    writer.close()


@pytest.fixture
async def origin_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(origin, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def proxy_for(
    rules: EgressPolicy, sandbox_id: str = "sbx_test", connect_timeout_s: float = 10.0
) -> tuple[EgressProxy, int]:
    """A proxy serving one sandbox's `rules` on a loopback listener: (proxy, its port)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    proxy = EgressProxy(connect_timeout_s=connect_timeout_s)
    await proxy.serve(sandbox_id, rules, listener)
    return proxy, listener.getsockname()[1]


async def ask(port: int, request: bytes | str) -> bytes:
    """Send one raw request to the proxy and read its whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request.encode() if isinstance(request, str) else request)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def allow(*entries: str) -> EgressPolicy:
    return EgressPolicy.from_wire(NetworkPolicy(egress="allowlist", allow=list(entries)))


async def test_allowed_plain_http_is_forwarded_in_origin_form(origin_port: int) -> None:
    proxy, port = await proxy_for(allow(f"127.0.0.1:{origin_port}"))
    try:
        request = f"GET http://127.0.0.1:{origin_port}/a?b=1 HTTP/1.1\r\nHost: x\r\n"
        reply = await ask(port, request.encode() + b"Proxy-Connection: keep-alive\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"GET /a?b=1 HTTP/1.1|close")
    finally:
        await proxy.aclose()


async def test_denied_requests_get_403_at_once_with_the_policy(origin_port: int) -> None:
    proxy, port = await proxy_for(allow("*.example.test"))
    try:
        started = time.monotonic()
        reply = await ask(port, f"CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\n\r\n".encode())
        assert time.monotonic() - started < 5  # refused before any connection attempt or lookup
        assert reply.startswith(b"HTTP/1.1 403 Forbidden") and b"X-Agentcell-Egress: denied" in reply
        assert b"allowlist (*.example.test)" in reply
        reply = await ask(port, b"GET http://not-listed.test/ HTTP/1.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 403") and b"not-listed.test:80 is denied" in reply
    finally:
        await proxy.aclose()


async def test_connect_tunnels_bytes_both_ways(origin_port: int) -> None:
    proxy, port = await proxy_for(allow(f"127.0.0.1:{origin_port}"))
    try:
        reply = await ask(
            port, f"CONNECT 127.0.0.1:{origin_port} HTTP/1.1\r\n\r\nGET /t HTTP/1.1\r\n\r\n".encode()
        )
        assert reply.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK")
        assert reply.endswith(b"GET /t HTTP/1.1|keep")  # a tunnel passes the request as it is
    finally:
        await proxy.aclose()


async def test_unreachable_malformed_and_unknown_requests(origin_port: int) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()
    proxy, port = await proxy_for(allow(f"127.0.0.1:{dead_port}"))
    try:
        reply = await ask(port, f"CONNECT 127.0.0.1:{dead_port} HTTP/1.1\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 502") and b"cannot connect" in reply
        assert (await ask(port, b"hello\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (await ask(port, b"GET ftp://x/ HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")
        assert (await ask(port, b"CONNECT x:99999 HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")
        reply = await ask(port, b"GET /nothing HTTP/1.1\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 404") and b"use this address as an HTTP proxy" in reply
    finally:
        await proxy.aclose()


async def test_close_cuts_open_connections(origin_port: int) -> None:
    proxy, port = await proxy_for(EgressPolicy("open"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET http://127.0.0.1:1/ HTTP/1.1\r\n")  # an unfinished head
    await writer.drain()
    await asyncio.sleep(0.05)
    await proxy.close("sbx_test")
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    assert not proxy.is_serving("sbx_test")


def test_pypi_links_are_rewritten_to_the_mirror_by_digest() -> None:
    digest = "a" * 64
    page = (
        f'<a href="../../files/pkg-1.0%2Blocal-py3-none-any.whl#sha256={digest}" '
        'data-requires-python="&gt;=3.8" data-dist-info-metadata="sha256=b">'
        "pkg-1.0+local-py3-none-any.whl</a>"
        '<a href="https://files.test/pkg-0.9.tar.gz#md5=abc">pkg-0.9.tar.gz</a><a>no href</a>'
    )
    links = parse_links("https://index.test/simple/pkg/", page)
    assert [link.filename for link in links] == ["pkg-1.0+local-py3-none-any.whl", "pkg-0.9.tar.gz"]
    assert links[0].artifact == Artifact(
        "https://index.test/files/pkg-1.0%2Blocal-py3-none-any.whl", "sha256", digest
    )
    assert links[1].artifact.digest is None and links[1].artifact.key.startswith("url-")
    html = render_page("pkg", links).decode()
    assert f'href="/pypi/files/sha256-{digest}/pkg-1.0%2Blocal-py3-none-any.whl#sha256={digest}"' in html
    assert 'data-requires-python="&gt;=3.8"' in html and "metadata" not in html
    assert normalize("Foo.Bar_baz") == "foo-bar-baz"


def test_npm_tarballs_are_keyed_by_their_sha512_integrity() -> None:
    data = b"tarball"
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    artifact = integrity_artifact("https://r.test/p/-/p-1.tgz", integrity)
    assert artifact.key == "sha512-" + hashlib.sha512(data).hexdigest()
    assert integrity_artifact("https://r.test/p/-/p-1.tgz", "sha1-abc").key.startswith("url-")
    assert integrity_artifact("https://r.test/p/-/p-1.tgz", "sha512-!!").key.startswith("url-")


class CountingFetcher(Fetcher):
    def __init__(self, body: bytes) -> None:
        super().__init__()
        self.body = body
        self.calls = 0

    async def download(self, url: str, dest: Path, algorithm: str, max_bytes: int = 1 << 62) -> str:
        self.calls += 1
        await asyncio.sleep(0.05)
        dest.write_bytes(self.body)  # noqa: ASYNC240 - a few bytes
        return hashlib.new(algorithm, self.body).hexdigest()


async def test_the_cache_downloads_once_and_keeps_only_verified_files(tmp_path: Path) -> None:
    fetcher = CountingFetcher(b"wheel")
    cache = ArtifactCache(tmp_path, fetcher)
    good = Artifact("https://x.test/w.whl", "sha256", hashlib.sha256(b"wheel").hexdigest())
    paths = await asyncio.gather(*(cache.ensure(good) for _ in range(5)))
    assert fetcher.calls == 1 and {p.read_bytes() for p in paths} == {b"wheel"}
    bad = Artifact("https://x.test/other.whl", "sha256", "0" * 64)
    with pytest.raises(FetchError, match="does not match the sha256 the index published"):
        await cache.ensure(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.key]  # noqa: ASYNC240


async def test_connections_per_sandbox_are_capped_and_protected_ports_refused(origin_port: int) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    proxy = EgressProxy(max_connections=1, protected_ports=[origin_port])
    await proxy.serve("sbx_cap", EgressPolicy("open"), listener)
    port = listener.getsockname()[1]
    try:
        reply = await ask(port, f"GET http://127.0.0.1:{origin_port}/ HTTP/1.1\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 403") and b"the agentcell server itself" in reply
        held_reader, held_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.05)
        with contextlib.suppress(ConnectionResetError):  # over the cap: closed at once (or reset)
            assert await ask(port, b"GET /x HTTP/1.1\r\n\r\n") == b""
        held_writer.close()
        assert await asyncio.wait_for(held_reader.read(), 2) == b""
    finally:
        await proxy.aclose()
    listed = socket.create_server(("127.0.0.1", 0))
    listed.setblocking(False)
    proxy = EgressProxy(protected_ports=[origin_port])
    await proxy.serve("sbx_listed", allow(f"127.0.0.1:{origin_port}"), listed)
    try:
        reply = await ask(
            listed.getsockname()[1], f"GET http://127.0.0.1:{origin_port}/ HTTP/1.1\r\n\r\n".encode()
        )
        assert reply.startswith(b"HTTP/1.1 200")  # an allowlist naming the address itself may
    finally:
        await proxy.aclose()


@pytest.mark.parametrize("target", ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:7f00:1]"])
async def test_an_ipv4_mapped_address_is_the_ipv4_address_it_reaches(origin_port: int, target: str) -> None:
    """`::ffff:127.0.0.1` is 127.0.0.1: it gets no further than 127.0.0.1 would, whether the server's
    own port (open policy) or any loopback port (an allowlist of every IPv6 address)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    proxy = EgressProxy(protected_ports=[origin_port])
    await proxy.serve("sbx_mapped", EgressPolicy("open"), listener)
    try:
        for request in (
            f"GET http://{target}:{origin_port}/ HTTP/1.1\r\n\r\n",
            f"CONNECT {target}:{origin_port} HTTP/1.1\r\n\r\n",
        ):
            reply = await ask(listener.getsockname()[1], request.encode())
            assert reply.startswith(b"HTTP/1.1 403") and b"the agentcell server itself" in reply
    finally:
        await proxy.aclose()
    proxy, port = await proxy_for(allow("::/0"))
    try:
        reply = await ask(port, f"GET http://{target}:{origin_port}/ HTTP/1.1\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 403")
    finally:
        await proxy.aclose()


async def test_a_catch_all_network_does_not_open_the_server_itself(origin_port: int) -> None:
    """Only an allow entry naming a loopback address reaches the server's own port; 0.0.0.0/0 is
    "everything else"."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    proxy = EgressProxy(protected_ports=[origin_port])
    await proxy.serve("sbx_all", allow("0.0.0.0/0"), listener)
    try:
        reply = await ask(
            listener.getsockname()[1], f"GET http://127.0.0.1:{origin_port}/ HTTP/1.1\r\n\r\n".encode()
        )
        assert reply.startswith(b"HTTP/1.1 403") and b"the agentcell server itself" in reply
    finally:
        await proxy.aclose()


@pytest.mark.parametrize(
    ("address", "own"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("0.0.0.0", True),
        ("::1", True),
        ("::", True),
        ("::ffff:127.0.0.1", True),
        ("203.0.113.9", False),
        ("2001:db8:ffff::9", False),
    ],
)
def test_the_kernel_says_which_addresses_are_the_hosts_own(address: str, own: bool) -> None:
    """Loopback, unspecified and (TEST-NET-3 / documentation addresses aside) nothing else here."""
    assert is_host_address(ipaddress.ip_address(address)) is own


def test_the_address_the_host_sends_from_is_its_own() -> None:
    """A non-loopback interface address (the source the kernel picks toward TEST-NET-3) is the
    host's own: a server bound to 0.0.0.0 answers there too."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.9", 9))  # UDP: picks a route and a source, sends nothing
        except OSError:
            pytest.skip("this host has no route out to learn its address from")
        source = ipaddress.ip_address(probe.getsockname()[0])
    assert not source.is_loopback and is_host_address(source)
