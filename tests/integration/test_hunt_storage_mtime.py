"""A file rewritten with its size kept and its old mtime put back (`cp -p`, `touch -r`, `unzip`,
`rsync -a` do it) is still a change: the next snapshot must hold the new bytes. The mtime is the
file owner's to set; the inode's change time is not."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import deploy

KEY = "x-agentcell-session-id"
APP = """
import os, subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        cmd = parse_qs(urlparse(self.path).query)["cmd"][0]
        done = subprocess.run(["bash", "-c", cmd], capture_output=True, cwd="/home/user")
        body = done.stdout + done.stderr
        self.send_response(200 if done.returncode == 0 else 500)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
CONFIG = {
    "cmd": "python3 app.py",
    "idle_timeout_s": 600,
    "workspace": {"persist": True, "sync_interval_s": 0},
}


@pytest.fixture
def fn(api: httpx.Client, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "app.py").write_text(APP)
    name = "hunt-" + uuid.uuid4().hex[:8]
    reply = deploy(api, name, CONFIG, tmp_path / "code")
    assert reply.status_code == 200, reply.text
    yield name
    api.delete(f"/v1/functions/{name}")


def sh(api: httpx.Client, fn: str, key: str, cmd: str) -> str:
    reply = api.get(f"/fn/{fn}/", params={"cmd": cmd}, headers={KEY: key})
    assert reply.status_code == 200, reply.text
    return reply.text


def test_a_rewrite_that_keeps_size_and_mtime_is_saved(api: httpx.Client, fn: str) -> None:
    session = api.post(f"/v1/functions/{fn}/sessions", json={"key": "k"}).json()
    sh(api, fn, "k", "head -c 200000 /dev/urandom > notes.bin && touch -d @1600000000 notes.bin")
    assert api.post(f"/v1/sessions/{session['id']}/snapshot").status_code == 201
    sh(
        api,
        fn,
        "k",
        "head -c 200000 /dev/urandom > new.bin && touch -d @1600000000 new.bin && cp -p new.bin notes.bin",
    )
    assert api.post(f"/v1/sessions/{session['id']}/snapshot").status_code == 201
    expected = sh(api, fn, "k", "sha256sum notes.bin")
    assert api.delete(f"/v1/sessions/{session['id']}").status_code == 204
    again = api.post(f"/v1/functions/{fn}/sessions", json={"key": "k"}).json()
    try:
        assert sh(api, fn, "k", "sha256sum notes.bin") == expected
    finally:
        api.delete(f"/v1/sessions/{again['id']}")
