"""Per-sandbox budgets in the server, on a real server with real sandboxes: a sandbox tracks at
most AGENTCELL_SANDBOX_MAX_COMMANDS commands at once (a start past it is a 429 that says what to
do; a finished one frees its slot), and the stdin the server holds queued for one sandbox's
commands stays under AGENTCELL_SANDBOX_MAX_STDIN_BYTES (a write past it is a 429), while a large
stdin stream to one reader still arrives whole. One busy sandbox must not spend the file
descriptors and memory that every tenant's sandboxes share."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH, ServerFactory

pytestmark = pytest.mark.system
MiB = 1 << 20
DEFAULT_MAX_COMMANDS = 64
SLEEPER = {"argv": ["sleep", "600"], "background": True}


def server_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def new_sandbox(api: httpx.Client) -> str:
    created = api.post("/v1/sandboxes", json={"timeout_s": 300})
    assert created.status_code == 201, created.text
    return f"/v1/sandboxes/{created.json()['id']}"


def wait_not_running(api: httpx.Client, base: str, process_id: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = api.get(f"{base}/processes").json()["processes"]
        if not [p for p in listed if p["process_id"] == process_id and p["running"]]:
            return
        time.sleep(0.05)
    raise AssertionError(f"{process_id} still runs 10 s after SIGKILL")


def test_a_sandbox_tracks_at_most_its_command_budget(server_factory: ServerFactory) -> None:
    """With the default budget, 64 background `sleep`s fill the sandbox; the 65th start — and a
    foreground command or a terminal — is a 429 quota_exceeded that names the limit and what to do.
    Killing one frees its slot. The server's open fds stay bounded by the budget."""
    # (the server-wide budget out of the way: derived from a 20,000-fd limit it is the floor, 64)
    server = server_factory(env={"AGENTCELL_SANDBOX_POOL": "0", "AGENTCELL_MAX_COMMANDS": "1000"})
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        base = new_sandbox(api)
        started = [api.post(f"{base}/commands", json=SLEEPER) for _ in range(DEFAULT_MAX_COMMANDS)]
        assert [r.status_code for r in started] == [201] * DEFAULT_MAX_COMMANDS, started[-1].text
        fds_full = len(list(Path(f"/proc/{server.proc.pid}/fd").iterdir()))

        for refused in (
            api.post(f"{base}/commands", json=SLEEPER),
            api.post(f"{base}/commands", json={"cmd": "echo hi"}),
            api.post(
                f"{base}/commands", json={"cmd": "cat", "background": True, "pty": {"rows": 24, "cols": 80}}
            ),
        ):
            assert refused.status_code == 429, refused.text
            error = refused.json()
            assert error["code"] == "quota_exceeded"
            assert f"{DEFAULT_MAX_COMMANDS} commands" in error["message"]
            assert "kill" in error["message"] and "finished" in error["message"]
        assert len(list(Path(f"/proc/{server.proc.pid}/fd").iterdir())) <= fds_full

        victim = started[0].json()["process_id"]
        assert api.post(f"{base}/processes/{victim}/signal", json={"signal": "SIGKILL"}).status_code == 204
        wait_not_running(api, base, victim)
        again = api.post(f"{base}/commands", json=SLEEPER)
        assert again.status_code == 201, again.text
        assert api.post(f"{base}/commands", json=SLEEPER).status_code == 429

        other = new_sandbox(api)  # the budget is per sandbox: another one starts commands freely
        ran = api.post(f"{other}/commands", json={"cmd": "echo hi"})
        assert ran.status_code == 200 and '"exit_code":0' in ran.text.replace(" ", ""), ran.text


def test_stdin_queued_for_a_sandbox_stays_under_its_budget(server_factory: ServerFactory) -> None:
    """Sixteen `sleep`s that never read: 8 MiB writes to each (128 MiB in all). Two fill the
    16 MiB budget (the server holds them queued); the rest are refused with 429 and the server's
    memory does not grow by what they carried (before the budget it grew by all 128 MiB; parsing
    one 8 MiB body leaves some tens of MiB in the allocator, whatever the number of writes).
    Killing a sleeper frees its queued input, and a write fits again."""
    env = {"AGENTCELL_SANDBOX_POOL": "0", "AGENTCELL_SANDBOX_MAX_STDIN_BYTES": str(16 * MiB)}
    server = server_factory(env=env)
    chunk = "x" * (8 * MiB)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        base = new_sandbox(api)
        sleepers = [api.post(f"{base}/commands", json=SLEEPER).json()["process_id"] for _ in range(16)]
        rss_before = server_rss_bytes(server.proc.pid)
        statuses, last = [], None
        for process_id in sleepers:
            last = api.post(f"{base}/processes/{process_id}/stdin", json={"data": chunk})
            statuses.append(last.status_code)
        assert statuses == [204, 204] + [429] * 14, statuses
        assert last is not None and last.json()["code"] == "quota_exceeded"
        assert "stdin" in last.json()["message"] and "16 MiB" in last.json()["message"]
        grown = server_rss_bytes(server.proc.pid) - rss_before
        assert grown < 72 * MiB, f"the server grew by {grown / MiB:.0f} MiB for 16 MiB of queued stdin"

        assert (
            api.post(f"{base}/processes/{sleepers[0]}/signal", json={"signal": "SIGKILL"}).status_code == 204
        )
        wait_not_running(api, base, sleepers[0])
        fits = api.post(f"{base}/processes/{sleepers[2]}/stdin", json={"data": chunk})
        assert fits.status_code == 204, fits.text


def test_a_large_stdin_stream_to_one_reader_arrives_whole(server_factory: ServerFactory) -> None:
    """48 MiB streamed in 2 MiB writes to a reader that starts late (`sleep 1; wc -c`), under an
    8 MiB sandbox budget: every write is a 204 (a write behind one the reader has not taken yet
    waits for it: backpressure, not a 409 or a 429), and every byte arrives."""
    env = {"AGENTCELL_SANDBOX_POOL": "0", "AGENTCELL_SANDBOX_MAX_STDIN_BYTES": str(8 * MiB)}
    server = server_factory(env=env)
    chunk, total = "y" * (2 * MiB), 48 * MiB
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        base = new_sandbox(api)
        command = {"cmd": "sleep 1; wc -c", "background": True}
        reader = api.post(f"{base}/commands", json=command).json()["process_id"]
        for _ in range(total // len(chunk)):
            wrote = api.post(f"{base}/processes/{reader}/stdin", json={"data": chunk})
            assert wrote.status_code == 204, wrote.text
        closed = api.post(f"{base}/processes/{reader}/stdin", json={"data": "", "close": True})
        assert closed.status_code == 204, closed.text
        events = api.get(f"{base}/processes/{reader}/events").text
        assert f'"data":"{total}\\n"' in events.replace(" ", ""), events[-400:]
