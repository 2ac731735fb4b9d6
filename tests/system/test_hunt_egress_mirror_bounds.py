"""Hostile sandboxes against the node's package mirrors, on a real server with a registry and an
index that the test serves on the host's loopback: what one sandbox asks the mirrors for must not
grow the server's memory or disk without bound (every other tenant shares them)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcell.client import AsyncSandbox
from agentcell.protocol.egress import NetworkPolicy
from agentcell.server.egress.node import EgressConfig
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.sandbox.driver import SandboxSpec
from tests.conftest import ServerFactory
from tests.loopback_http import QuietHandler, serving
from tests.system.conftest import make_driver, node_leftovers, run

pytestmark = pytest.mark.system

DOCUMENT_BYTES = 4 << 20
DOCUMENTS = 100
"""100 documents of 4 MiB: 400 MiB if the mirror kept them all"""


class _Registry(QuietHandler):
    """An npm registry that has every package: each document carries a 4 MiB readme (real
    packuments of busy packages are this large)."""

    def do_GET(self) -> None:
        name = self.path.strip("/")
        body = json.dumps({"name": name, "readme": "x" * DOCUMENT_BYTES, "versions": {}}).encode()
        self.answer(body, "application/json")


@pytest.fixture
def registry() -> Iterator[int]:
    with serving(_Registry) as port:
        yield port


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_many_package_documents_do_not_grow_the_server_without_bound(
    server_factory: ServerFactory, registry: int
) -> None:
    """A sandbox asks the npm mirror for 100 different packages of 4 MiB each: the server keeps a
    bounded number of them (the least recently used go), so its memory grows by far less than
    the 400 MiB it was asked for; each answer is still the whole document."""
    server = server_factory(env={"AGENTCELL_NPM_REGISTRY": f"http://127.0.0.1:{registry}/"})
    network = {"egress": "allowlist", "allow": [f"127.0.0.1:{registry}"]}
    async with AsyncSandbox.create(network=network, api_url=server.url) as sbx:
        warm = await sbx.commands.run('curl -sS -o /dev/null "$npm_config_registry"pkg0')
        assert warm.exit_code == 0, warm  # (the server's code paths loaded before measuring)
        before = rss_bytes(server.proc.pid)
        fetch_all = (
            f"for i in $(seq {DOCUMENTS}); do "
            'curl -sS -o /dev/null -w "%{size_download}\\n" "$npm_config_registry"pkg$i || exit 1; done'
        )
        result = await sbx.commands.run(fetch_all, timeout_s=300)
        sizes = [int(size) for size in result.stdout.split()]
        assert len(sizes) == DOCUMENTS and min(sizes) > DOCUMENT_BYTES, result
        grown = rss_bytes(server.proc.pid) - before
    assert grown < 160 << 20, f"the server grew by {grown >> 20} MiB"


FILE_BYTES = 8 << 20
FILES = 12
CACHE_BYTES = 64 << 20
"""the test node's package-cache budget (both mirrors together): 12 files of 8 MiB overfill it"""


def file_body(name: str) -> bytes:
    return name.encode().ljust(FILE_BYTES, b".")


class _Index(QuietHandler):
    """A PEP 503 index that has every project: one 8 MiB file each, with its true sha256."""

    def do_GET(self) -> None:
        if self.path.startswith("/simple/"):
            name = self.path.strip("/").rpartition("/")[2]
            digest = hashlib.sha256(file_body(name)).hexdigest()
            link = f'<a href="/files/{name}-1.0.tar.gz#sha256={digest}">{name}-1.0.tar.gz</a>'
            body = f"<html><body>{link}</body></html>".encode()
        else:
            body = file_body(self.path.rpartition("/")[2].removesuffix("-1.0.tar.gz"))
        self.answer(body)


@pytest.fixture
def index() -> Iterator[int]:
    with serving(_Index) as port:
        yield port


def stored_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


FETCH_FILES = """
set -e
for i in $(seq {files}); do
  href=$(curl -sS "$PIP_INDEX_URL"proj$i/ | sed -n 's/.*href="\\([^"#]*\\).*/\\1/p')
  curl -sS -o /tmp/f "http://127.0.0.1:3128$href"
  head -c 6 /tmp/f; echo " $(stat -c %s /tmp/f)"
done
"""


async def test_many_package_files_do_not_fill_the_node_disk(
    tmp_path: Path, prebuilt_helper: Path, index: int
) -> None:
    """A sandbox downloads 12 different 8 MiB files through the pip mirror: each arrives whole,
    but the node keeps at most its cache budget of them (the least recently used go first)."""
    state = tmp_path / "state"
    config = EgressConfig(
        cache_dir=state / "package-cache",
        pip_index_url=f"http://127.0.0.1:{index}/simple/",
        cache_max_bytes=CACHE_BYTES,
    )
    driver = make_driver(state, prebuilt_helper, config)
    try:
        policy = EgressPolicy.from_wire(NetworkPolicy(egress="allowlist", allow=[f"127.0.0.1:{index}"]))
        await driver.start(SandboxSpec(sandbox_id="hunt-disk", egress=policy))
        fetched = await run(driver, "hunt-disk", ["sh", "-c", FETCH_FILES.format(files=FILES)], timeout_s=120)
        expected = [f"{f'proj{i}'.ljust(6, '.')[:6]} {FILE_BYTES}" for i in range(1, FILES + 1)]
        assert fetched.stdout.splitlines() == expected, fetched
        assert stored_bytes(state / "package-cache") <= CACHE_BYTES
    finally:
        await driver.aclose()
    assert node_leftovers(driver) == []


class _SlowFiles(QuietHandler):
    """An index whose pages answer at once and whose files trickle (one byte every 0.2 s)."""

    def do_GET(self) -> None:
        if self.path.startswith("/simple/"):
            name = self.path.strip("/").rpartition("/")[2]
            link = f'<a href="/files/{name}-1.0.tar.gz">{name}-1.0.tar.gz</a>'
            body = f"<html><body>{link}</body></html>".encode()
            self.answer(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        for _ in range(100):
            try:
                self.wfile.write(b".")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)


@pytest.fixture
def slow_index() -> Iterator[int]:
    with serving(_SlowFiles) as port:
        yield port


SLOW_DOWNLOADS = """
for i in $(seq 8); do
  href=$(curl -sS "$PIP_INDEX_URL"slow$i/ | sed -n 's/.*href="\\([^"#]*\\).*/\\1/p')
  curl -sS -o /dev/null "http://127.0.0.1:3128$href" &
done
sleep 1
echo started
wait
"""


async def test_slow_downloads_of_one_sandbox_do_not_hold_up_the_pages_of_another(
    tmp_path: Path, prebuilt_helper: Path, slow_index: int
) -> None:
    """Sandbox A starts 8 downloads that trickle for 20 s each; sandbox B's page requests are
    still answered at once (pages never queue behind another sandbox's downloads)."""
    state = tmp_path / "state"
    config = EgressConfig(
        cache_dir=state / "package-cache", pip_index_url=f"http://127.0.0.1:{slow_index}/simple/"
    )
    driver = make_driver(state, prebuilt_helper, config)
    policy = EgressPolicy.from_wire(NetworkPolicy(egress="allowlist", allow=[f"127.0.0.1:{slow_index}"]))
    try:
        for sid in ("hunt-slow-a", "hunt-slow-b"):
            await driver.start(SandboxSpec(sandbox_id=sid, egress=policy))
        hostile = asyncio.ensure_future(
            run(driver, "hunt-slow-a", ["sh", "-c", SLOW_DOWNLOADS], timeout_s=60)
        )
        await asyncio.sleep(2.0)  # A's downloads are under way
        started = time.monotonic()
        page = await run(
            driver,
            "hunt-slow-b",
            ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:3128/pypi/simple/other/"],
        )
        took = time.monotonic() - started
        # curl's --max-time 5 is the bound: behind A's downloads (20 s each) it fails
        assert "other-1.0.tar.gz" in page.stdout, (page, took)
        await driver.stop("hunt-slow-a")
        with contextlib.suppress(Exception):
            await hostile
    finally:
        await driver.aclose()
    assert node_leftovers(driver) == []


class _SlowPages(QuietHandler):
    """An index that takes a second to answer any page (a busy or distant upstream); `asked`
    holds the pages' names in the order their requests reached it; `first` is set at the first."""

    asked: list[str] = []
    first = threading.Event()

    def do_GET(self) -> None:
        self.asked.append(self.path.strip("/").rpartition("/")[2])
        self.first.set()
        time.sleep(1.0)
        name = self.path.strip("/").rpartition("/")[2]
        body = f'<html><body><a href="/files/{name}-1.0.tar.gz">{name}-1.0.tar.gz</a></body></html>'.encode()
        with contextlib.suppress(OSError):
            self.answer(body)


@pytest.fixture
def slow_pages() -> Iterator[int]:
    _SlowPages.asked, _SlowPages.first = [], threading.Event()
    with serving(_SlowPages) as port:
        yield port


MANY_PAGES = """
for i in $(seq 40); do curl -sS -o /dev/null "$PIP_INDEX_URL"many$i/ & done
wait
"""


async def test_one_sandbox_asking_for_many_pages_does_not_hold_up_another(
    tmp_path: Path, prebuilt_helper: Path, slow_pages: int
) -> None:
    """Sandbox A asks for 40 different pages at once from an index that takes 1 s per page;
    sandbox B's page is fetched beside A's, not after A's forty (which the mirror fetches a few at
    a time for A, so they take tens of seconds). Told by the order in which the index is asked,
    not by a clock: a loaded machine slows both sandboxes alike."""
    state = tmp_path / "state"
    config = EgressConfig(
        cache_dir=state / "package-cache", pip_index_url=f"http://127.0.0.1:{slow_pages}/simple/"
    )
    driver = make_driver(state, prebuilt_helper, config)
    policy = EgressPolicy.from_wire(NetworkPolicy(egress="allowlist", allow=[f"127.0.0.1:{slow_pages}"]))
    try:
        for sid in ("hunt-pages-a", "hunt-pages-b"):
            await driver.start(SandboxSpec(sandbox_id=sid, egress=policy))
        hostile = asyncio.ensure_future(run(driver, "hunt-pages-a", ["sh", "-c", MANY_PAGES], timeout_s=60))
        assert await asyncio.to_thread(_SlowPages.first.wait, 30)  # A's pages reach the index
        page = await run(
            driver,
            "hunt-pages-b",
            ["curl", "-sS", "--max-time", "30", "http://127.0.0.1:3128/pypi/simple/mine/"],
        )
        assert "mine-1.0.tar.gz" in page.stdout, page
        asked_before = _SlowPages.asked.index("mine")
        assert asked_before < 20, (asked_before, _SlowPages.asked)  # A's pages that went first
        await driver.stop("hunt-pages-a")
        with contextlib.suppress(Exception):
            await hostile
    finally:
        await driver.aclose()
    assert node_leftovers(driver) == []
