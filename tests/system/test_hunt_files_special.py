"""Reading a special file through the files API never opens it: a sandbox's terminals, FIFOs and
devices are refused (400) from a look at what the path is, without the side effects an open has.

The server here runs as a session leader, as under systemd or `setsid`: a terminal it opened
without O_NOCTTY became its controlling terminal, and the sandbox hanging it up then killed the
whole server with SIGHUP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH, TEST_API_KEY, ServerProcess, free_port

pytestmark = pytest.mark.system

HOLD_A_TERMINAL = """
import os, sys
master, slave = os.openpty()  # a terminal of the sandbox that is nobody's controlling terminal
print(os.ttyname(slave), flush=True)
os.close(slave)
sys.stdin.read()  # until told to hang up
os.close(master)
"""


class SessionLeaderServer(ServerProcess):
    """A ServerProcess started in a session of its own (it is the session leader)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = state_dir.parent / f"server-{self.port}.log"
        self._log = self.log_path.open("wb")
        args = ["--port", str(self.port), "--state-dir", str(state_dir), "--driver", "linux"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentcell.server", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "AGENTCELL_ADMIN_KEY": TEST_API_KEY},
            start_new_session=True,
        )
        self._wait_ready()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[httpx.Client]:
    server = SessionLeaderServer(tmp_path / "state")
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
            yield client
        assert server.proc.poll() is None, f"the server died:\n{server.log()}"
    finally:
        if server.stop() != 0:  # it died: a new server on its state reaps the sandboxes it left
            ServerProcess(tmp_path / "state").stop()


def background(api: httpx.Client, sandbox: str, argv: list[str]) -> str:
    reply = api.post(f"/v1/sandboxes/{sandbox}/commands", json={"argv": argv, "background": True})
    assert reply.status_code == 201, reply.text
    process_id: str = reply.json()["process_id"]
    return process_id


def first_line(api: httpx.Client, sandbox: str, process_id: str) -> str:
    url = f"/v1/sandboxes/{sandbox}/processes/{process_id}/events"
    with api.stream("GET", url) as events:
        for line in events.iter_lines():
            event = json.loads(line)
            if event["type"] == "stdout":
                return str(event["data"]).strip()
    raise AssertionError("the process ended without output")


def is_running(api: httpx.Client, sandbox: str, process_id: str) -> bool:
    processes = api.get(f"/v1/sandboxes/{sandbox}/processes").json()["processes"]
    return any(p["process_id"] == process_id and p["running"] for p in processes)


def test_a_terminal_read_through_the_files_api_cannot_hang_up_the_server(api: httpx.Client) -> None:
    """A sandbox's terminal that no session controls, read through the files API, then hung up
    by the sandbox: the server lives on."""
    sandbox = api.post("/v1/sandboxes", json={}).json()["id"]
    holder = background(api, sandbox, ["python3", "-c", HOLD_A_TERMINAL])
    tty = first_line(api, sandbox, holder)
    assert tty.startswith("/dev/pts/")
    reply = api.get(f"/v1/sandboxes/{sandbox}/files", params={"path": tty})
    assert reply.status_code == 400 and "expected a regular file" in reply.text
    stdin = f"/v1/sandboxes/{sandbox}/processes/{holder}/stdin"
    assert api.post(stdin, json={"data": "", "close": True}).status_code == 204  # hang the terminal up
    deadline = time.monotonic() + 10
    while is_running(api, sandbox, holder) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # a SIGHUP, if any, has been delivered by now
    assert api.get("/healthz").status_code == 200
    assert api.delete(f"/v1/sandboxes/{sandbox}").status_code == 204


def test_reading_a_fifo_does_not_open_it_for_a_waiting_writer(api: httpx.Client) -> None:
    """A sandbox process opening a FIFO to write waits for a reader; a read of the FIFO through
    the files API is refused without being that reader (it opened the FIFO, which let the writer
    through, then closed it: the writer's first write got SIGPIPE)."""
    sandbox = api.post("/v1/sandboxes", json={}).json()["id"]
    reply = api.post(f"/v1/sandboxes/{sandbox}/commands", json={"cmd": "mkfifo /tmp/fifo"})
    assert reply.status_code == 200 and '"exit_code":0' in reply.text
    writer = background(api, sandbox, ["python3", "-c", "open('/tmp/fifo', 'w').write('x')"])
    time.sleep(0.3)
    reply = api.get(f"/v1/sandboxes/{sandbox}/files", params={"path": "/tmp/fifo"})
    assert reply.status_code == 400 and "FIFO" in reply.text
    time.sleep(0.3)
    assert is_running(api, sandbox, writer), "the writer got through: the FIFO was opened"
    assert api.delete(f"/v1/sandboxes/{sandbox}").status_code == 204
