"""Tiny packages made on the spot, so template tests never need the internet: a pure-Python wheel,
an npm tarball, and a PEP 503 "simple" index serving wheels on loopback."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def tiny_wheel(name: str = "acelltiny", version: str = "0.1", value: int = 42) -> tuple[str, bytes]:
    """(file name, bytes) of a py3-none-any wheel whose module has `VALUE = value`."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VALUE = {value}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: agentcell-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        record.append(f"{dist}/RECORD,,")
        wheel.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return f"{name}-{version}-py3-none-any.whl", buffer.getvalue()


def tiny_npm_package(name: str = "acell-tiny", version: str = "1.0.0", value: int = 42) -> tuple[str, bytes]:
    """(file name, bytes) of an npm tarball exporting `value`, with a `name` bin printing it."""
    files = {
        "package/package.json": (
            f'{{"name": "{name}", "version": "{version}", "main": "index.js", "bin": {{"{name}": "cli.js"}}}}'
        ).encode(),
        "package/index.js": f"module.exports = {value};\n".encode(),
        "package/cli.js": b'#!/usr/bin/env node\nconsole.log(require("./index.js"));\n',
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o755 if path.endswith("cli.js") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return f"{name}-{version}.tgz", buffer.getvalue()


@contextmanager
def simple_index(wheels: dict[str, bytes], root: Path) -> Iterator[str]:
    """Serve `wheels` (file name → bytes) as a PEP 503 index on 127.0.0.1; yields its /simple/ URL."""
    for file_name, data in wheels.items():
        project = file_name.split("-")[0].lower().replace("_", "-")
        (root / "simple" / project).mkdir(parents=True, exist_ok=True)
        (root / "simple" / project / file_name).write_bytes(data)
        link = f'<a href="{file_name}#sha256={hashlib.sha256(data).hexdigest()}">{file_name}</a>'
        (root / "simple" / project / "index.html").write_text(f"<html><body>{link}</body></html>\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
