"""pip_cache: `pip install` of a 20 MiB wheel in a new sandbox when the node's package mirror
already holds it (median of the installs after the first) against the first install, which fills
the cache from the upstream index: a local PEP 503 index this bench serves on loopback, once at
loopback speed and once throttled to 100 Mbit/s (a typical download rate from a real index)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

from bench.client import LeanClient
from bench.report import emit, median, progress
from bench.server import BenchServer

NAME = "pip_cache"
PAYLOAD_BYTES = 20 << 20
THROTTLED_BYTES_PER_S = 12_500_000  # 100 Mbit/s
PACKAGE = "acellbench"
REPEATS = 5


def build_wheel(version: str) -> tuple[str, bytes]:
    """A pure-Python wheel carrying PAYLOAD_BYTES of incompressible data."""
    filename = f"{PACKAGE}-{version}-py3-none-any.whl"
    info = f"{PACKAGE}-{version}.dist-info"
    files = {
        f"{PACKAGE}/__init__.py": b"VALUE = 42\n",
        f"{PACKAGE}/blob.bin": os.urandom(PAYLOAD_BYTES),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return filename, buffer.getvalue()


def write_index(root: Path, version: str) -> None:
    filename, data = build_wheel(version)
    (root / "files").mkdir(parents=True, exist_ok=True)
    (root / "files" / filename).write_bytes(data)
    page = root / "simple" / PACKAGE
    page.mkdir(parents=True, exist_ok=True)
    link = f'<a href="../../files/{filename}#sha256={hashlib.sha256(data).hexdigest()}">{filename}</a>'
    (page / "index.html").write_text(f"<!DOCTYPE html><html><body>{link}</body></html>")


@contextmanager
def local_index(root: Path, bytes_per_s: float | None) -> Iterator[int]:
    """Serve root on 127.0.0.1; with bytes_per_s, files go out no faster than that."""

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def copyfile(self, source: Any, outputfile: Any) -> None:
            started = time.monotonic()
            sent = 0
            while chunk := source.read(256 << 10):
                outputfile.write(chunk)
                sent += len(chunk)
                if bytes_per_s:
                    time.sleep(max(0.0, started + sent / bytes_per_s - time.monotonic()))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


async def install_s(client: LeanClient, index_port: int, version: str) -> float:
    """Seconds for `pip install` in a new sandbox (created before the clock starts)."""
    network = {"egress": "allowlist", "allow": [f"127.0.0.1:{index_port}"]}
    status, body = await client.request("POST", "/v1/sandboxes", {"timeout_s": 600, "network": network})
    assert status == 201, body
    sid = json.loads(body)["id"]
    try:
        started = time.perf_counter()
        command = {
            "argv": ["pip", "install", "-q", "--no-cache-dir", f"{PACKAGE}=={version}"],
            "timeout_s": 300,
        }
        _, events = await client.request("POST", f"/v1/sandboxes/{sid}/commands", command)
        elapsed = time.perf_counter() - started
        assert b'"exit_code":0' in events, events[-2000:]
        return elapsed
    finally:
        await client.request("DELETE", f"/v1/sandboxes/{sid}")


async def measure(server: BenchServer, index_port: int, version: str) -> tuple[float, list[float]]:
    """The first install (fills the node cache), then REPEATS installs each in a new sandbox."""
    async with LeanClient("127.0.0.1", server.port) as client:
        first = await install_s(client, index_port, version)
        again = [await install_s(client, index_port, version) for _ in range(REPEATS)]
    return first, again


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="agentcell-bench-index-"))
    try:
        for label, rate in (("loopback", None), ("100mbit", THROTTLED_BYTES_PER_S)):
            version = f"1.0+{label}"
            write_index(root, version)
            with local_index(root, rate) as port:
                env = {"AGENTCELL_PIP_INDEX_URL": f"http://127.0.0.1:{port}/simple/"}
                with BenchServer(**env) as server:
                    progress(f"{NAME}: pip install of a {PAYLOAD_BYTES >> 20} MiB wheel, upstream {label}")
                    first, again = asyncio.run(measure(server, port, version))
            progress(f"{NAME}: first {first:.2f} s, then {', '.join(f'{t:.2f}' for t in again)} s")
            emit(NAME, f"cached_install_s_{label}", median(again), "s", first)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
