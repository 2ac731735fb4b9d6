"""Shared by the function benchmarks: deploy the test echo function on a bench server."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import httpx

ECHO_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "echo_fn"


def echo_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(ECHO_DIR / "app.py", arcname="app.py")
    return buffer.getvalue()


def deploy(client: httpx.Client, name: str, **config: object) -> None:
    body = {"cmd": "python3 app.py", "idle_timeout_s": 3600, **config}
    files: dict[str, tuple[str | None, bytes | str]] = {
        "config": (None, json.dumps(body)),
        "code": ("code.tar.gz", echo_archive()),
    }
    reply = client.put(f"/v1/functions/{name}", files=files)
    reply.raise_for_status()
