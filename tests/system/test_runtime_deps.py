"""Run-time dependencies: `pip install` / `npm install` inside a running sandbox, through the
node's caching package mirrors, from a local index and registry that the test serves on the host's
loopback (never a real one). Installs land in the workspace (~/.local, ~/node_modules); the second
sandbox installing the same package is served from the node's cache; a file that does not match
its published digest is never cached nor installed."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from agentcell.protocol.egress import NetworkPolicy
from agentcell.server.egress.node import EgressConfig
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.sandbox.driver import SandboxSpec
from agentcell.server.sandbox.linux.driver import LinuxDriver
from tests.system.conftest import node_leftovers, run

pytestmark = pytest.mark.system


def build_wheel(name: str, version: str, payload_bytes: int = 0) -> tuple[str, bytes]:
    """A minimal pure-Python wheel: `import <name>; <name>.VALUE == 42`."""
    filename = f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{name}/blob.bin": bytes(payload_bytes),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [
        f"{path},sha256={_b64(hashlib.sha256(data).digest())},{len(data)}" for path, data in files.items()
    ]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return filename, buffer.getvalue()


def build_npm_tarball(name: str, version: str) -> bytes:
    files = {
        "package/package.json": json.dumps({"name": name, "version": version, "main": "index.js"}).encode(),
        "package/index.js": b"module.exports = 42;\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, data in files.items():
            entry = tarfile.TarInfo(path)
            entry.size, entry.mode = len(data), 0o644
            archive.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class LocalIndex:
    """A PEP 503 index and an npm registry in one directory, served on the host's loopback."""

    root: Path
    port: int = 0
    fetched: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_wheel(self, name: str, version: str, *, payload_bytes: int = 0, lie: bool = False) -> None:
        filename, data = build_wheel(name, version, payload_bytes)
        digest = hashlib.sha256(data + b"x" if lie else data).hexdigest()
        (self.root / "files").mkdir(parents=True, exist_ok=True)
        (self.root / "files" / filename).write_bytes(data)
        page = self.root / "simple" / name
        page.mkdir(parents=True, exist_ok=True)
        link = f'<a href="../../files/{filename}#sha256={digest}">{filename}</a>'
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>{link}</body></html>")

    def add_npm(self, name: str, version: str) -> None:
        data = build_npm_tarball(name, version)
        (self.root / "npm" / "-").mkdir(parents=True, exist_ok=True)
        (self.root / "npm" / "-" / f"{name}-{version}.tgz").write_bytes(data)
        integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
        dist = {"tarball": f"{self.url}/npm/-/{name}-{version}.tgz", "integrity": integrity}
        document = {
            "name": name,
            "dist-tags": {"latest": version},
            "versions": {version: {"name": name, "version": version, "dist": dist}},
        }
        (self.root / "npm" / name).mkdir(parents=True, exist_ok=True)
        (self.root / "npm" / name / "index.json").write_text(json.dumps(document))

    def file_fetches(self) -> int:
        return sum(1 for p in self.fetched if p.startswith(("/files/", "/npm/-/")))


@pytest.fixture
def local_index(tmp_path: Path) -> Iterator[LocalIndex]:
    index = LocalIndex(tmp_path / "index")
    index.root.mkdir()

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(index.root), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            index.fetched.append(self.path)
            if self.path.startswith("/npm/") and not self.path.startswith("/npm/-/"):
                self.path = self.path.rstrip("/") + "/index.json"
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    index.port = server.server_address[1]
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def mirror_driver(
    tmp_path: Path, prebuilt_helper: Path, local_index: LocalIndex
) -> AsyncIterator[LinuxDriver]:
    """A driver whose package mirrors cache the local index and registry."""
    state = tmp_path / "state"
    (state / "bin").mkdir(parents=True)
    shutil.copy2(prebuilt_helper, state / "bin" / prebuilt_helper.name)
    config = EgressConfig(
        cache_dir=state / "package-cache",
        pip_index_url=f"{local_index.url}/simple/",
        npm_registry_url=f"{local_index.url}/npm/",
    )
    driver = LinuxDriver(state, close_grace_s=0.5, egress=config)
    try:
        yield driver
    finally:
        await driver.aclose()
        assert node_leftovers(driver) == [], "the driver left part of its node behind"


async def start(driver: LinuxDriver, sandbox_id: str, allow: list[str]) -> str:
    policy = EgressPolicy.from_wire(NetworkPolicy(egress="allowlist", allow=allow))
    await driver.start(SandboxSpec(sandbox_id=sandbox_id, egress=policy))
    return sandbox_id


async def test_pip_install_lands_in_the_workspace_and_the_second_comes_from_the_cache(
    mirror_driver: LinuxDriver, local_index: LocalIndex
) -> None:
    local_index.add_wheel("tinypkg", "1.0")
    allow = [f"127.0.0.1:{local_index.port}"]
    for sid in ("deps-a", "deps-b"):
        await start(mirror_driver, sid, allow)
        installed = await run(mirror_driver, sid, ["pip", "install", "tinypkg"], timeout_s=120)
        assert installed.code == 0, installed.stderr
        probe = await run(
            mirror_driver, sid, ["python3", "-c", "import tinypkg; print(tinypkg.VALUE, tinypkg.__file__)"]
        )
        assert probe.stdout.startswith("42 /home/user/.local/lib/python3"), probe
    assert local_index.file_fetches() == 1, local_index.fetched  # the second install: from the node cache
    pip = await run(mirror_driver, "deps-b", ["python3", "-m", "pip", "--version"])
    assert pip.code == 0


async def test_the_mirror_is_closed_to_a_policy_without_the_index(
    mirror_driver: LinuxDriver, local_index: LocalIndex
) -> None:
    local_index.add_wheel("tinypkg", "1.0")
    sid = await start(mirror_driver, "deps-denied", ["pypi.example.test"])
    env = (await run(mirror_driver, sid, ["env"])).stdout
    assert "PIP_INDEX_URL" not in env and "npm_config_registry" not in env
    reply = await run(mirror_driver, sid, ["curl", "-sS", "http://127.0.0.1:3128/pypi/simple/tinypkg/"])
    assert "denied by this sandbox's network policy" in reply.stdout
    assert local_index.fetched == []


async def test_a_file_that_does_not_match_its_digest_is_neither_cached_nor_installed(
    mirror_driver: LinuxDriver, local_index: LocalIndex
) -> None:
    local_index.add_wheel("liarpkg", "1.0", lie=True)
    sid = await start(mirror_driver, "deps-liar", [f"127.0.0.1:{local_index.port}"])
    installed = await run(mirror_driver, sid, ["pip", "install", "--retries", "0", "liarpkg"], timeout_s=120)
    assert installed.code != 0
    assert not [p for p in (mirror_driver.state_dir / "package-cache").rglob("*") if p.is_file()]
    key_page = await run(mirror_driver, sid, ["curl", "-sS", "http://127.0.0.1:3128/pypi/simple/liarpkg/"])
    href = key_page.stdout.split('href="', 1)[1].split("#", 1)[0]
    reply = await run(mirror_driver, sid, ["curl", "-sS", f"http://127.0.0.1:3128{href}"])
    assert "does not match the sha256 the index published" in reply.stdout


async def test_npm_install_lands_in_the_workspace_and_the_second_comes_from_the_cache(
    mirror_driver: LinuxDriver, local_index: LocalIndex
) -> None:
    local_index.add_npm("tinynpm", "1.0.0")
    allow = [f"127.0.0.1:{local_index.port}"]
    for sid in ("npm-a", "npm-b"):
        await start(mirror_driver, sid, allow)
        installed = await run(mirror_driver, sid, ["npm", "install", "--no-save", "tinynpm"], timeout_s=120)
        assert installed.code == 0, installed.stdout + installed.stderr
        probe = await run(
            mirror_driver, sid, ["node", "-e", "console.log(require('tinynpm'), require.resolve('tinynpm'))"]
        )
        assert probe.stdout == "42 /home/user/node_modules/tinynpm/index.js\n", probe
    assert local_index.file_fetches() == 1, local_index.fetched
