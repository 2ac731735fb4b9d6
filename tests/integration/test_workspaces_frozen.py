"""Snapshots taken while a program rewrites a file are point-in-time: the sandbox's processes are
frozen (cgroup freezer) for a pause and for an exclusive session's last snapshot, so the file
comes back as one whole version of it, never a mix of several. Real server, real Linux driver.

The writer rewrites an 8 MiB file in place with one pwrite() per version (every byte of version
n is n % 251 + 1); a reader that overlaps a rewrite — the snapshot walk, unfrozen — sees parts of
two or more versions."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from agentcell.client import AgentcellClientError, Sandbox
from tests.integration.conftest import deploy
from tests.integration.test_workspaces import HOME, KEY, live_session, wait_for

SIZE = 8 << 20
CYCLES = 4
WRITER = f"""
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
version = 0
while True:
    version += 1
    os.pwrite(fd, bytes([version % 251 + 1]) * {SIZE}, 0)
    with open("/tmp/versions", "w") as f:
        f.write(str(version))
"""
APP = f"""
import os, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIG, SIZE = "/home/user/big.bin", {SIZE}
versions = [0]


def write_forever():
    fd = os.open(BIG, os.O_WRONLY | os.O_CREAT, 0o644)
    while True:
        versions[0] += 1
        os.pwrite(fd, bytes([versions[0] % 251 + 1]) * SIZE, 0)


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/start" and not versions[0]:
            threading.Thread(target=write_forever, daemon=True).start()
        body = str(versions[0])
        if self.path == "/values":  # size, and how many distinct versions it holds
            data = open(BIG, "rb").read() if os.path.exists(BIG) else b""
            body = "%d %d" % (len(data), len(set(data)))
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def test_a_pause_keeps_one_whole_version_of_a_file_being_rewritten(server_url: str) -> None:
    with Sandbox.create(api_url=server_url, timeout_s=120) as sbx:
        sbx.files.write(f"{HOME}/writer.py", WRITER.encode())
        for cycle in range(CYCLES):
            sbx.commands.run(f"python3 {HOME}/writer.py {HOME}/big.bin", background=True)
            wait_for(lambda: _versions(sbx) >= 3, what="three versions written")
            sbx.pause()
            Sandbox.resume(sbx.id, api_url=server_url).close()
            values = set(sbx.files.read(f"{HOME}/big.bin"))
            assert len(values) == 1, f"cycle {cycle}: the paused file mixes versions {sorted(values)}"


def _versions(sbx: Sandbox) -> int:
    try:
        return int(sbx.files.read("/tmp/versions") or b"0")
    except (ValueError, AgentcellClientError):
        return 0  # not written yet, or caught mid-write


def test_a_sessions_last_snapshot_keeps_one_whole_version_of_a_file_being_rewritten(
    api: httpx.Client, tmp_path: Path
) -> None:
    code = tmp_path / "writer_fn"
    code.mkdir()
    (code / "app.py").write_text(APP)
    name = "frozen-" + str(time.monotonic_ns())[-8:]
    config = {"cmd": "python3 app.py", "idle_timeout_s": 600, "workspace": {"persist": True}}
    assert deploy(api, name, config, code).status_code == 200
    try:
        for cycle in range(CYCLES):
            values = _get(api, name, "/values")
            assert values == ("0 0" if cycle == 0 else f"{SIZE} 1"), f"cycle {cycle}: size, versions {values}"
            _get(api, name, "/start")
            wait_for(lambda: int(_get(api, name, "/versions")) >= 3, what="three versions written")
            assert api.delete(f"/v1/sessions/{live_session(api, name, 'k')['id']}").status_code == 204
    finally:
        api.delete(f"/v1/functions/{name}")


def _get(api: httpx.Client, fn: str, route: str) -> str:
    reply = api.get(f"/fn/{fn}{route}", headers={KEY: "k"})
    assert reply.status_code == 200, reply.text
    return reply.text
