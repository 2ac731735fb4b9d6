"""Output nobody reads is taken at UNREAD_OUTPUT_BYTES_PER_S, not as fast as a sandbox writes it:
taken at full speed, one background `yes` made the server spend two thirds of a core decoding and
dropping output, a cost outside the sandbox's CPU quota. Real server, real sandbox, real pipes."""

from __future__ import annotations

import json
import time

import httpx

from agentcell.server.scheduler.processes import BUFFER_LIMIT_BYTES, UNREAD_OUTPUT_BYTES_PER_S

WRITE_S = 2
WRITER = f"""
import os, time
chunk, written, end = b"y" * 65536, 0, time.monotonic() + {WRITE_S}
while time.monotonic() < end:
    written += os.write(1, chunk)
open("/tmp/written.tmp", "w").write(str(written))
os.rename("/tmp/written.tmp", "/tmp/written")
"""


def run(api: httpx.Client, sandbox_id: str, cmd: str) -> str:
    reply = api.post(f"/v1/sandboxes/{sandbox_id}/commands", json={"cmd": cmd})
    assert reply.status_code == 200, reply.text
    events = [json.loads(line) for line in reply.text.splitlines()]
    return "".join(e["data"] for e in events if e["type"] == "stdout")


def test_a_background_flood_nobody_reads_is_taken_at_the_unread_pace(
    api: httpx.Client, rest_sandbox: str
) -> None:
    """A writer that nobody follows gets its first BUFFER_LIMIT_BYTES out at once, then
    UNREAD_OUTPUT_BYTES_PER_S: in WRITE_S seconds it writes a few MiB, not the hundreds a pipe
    read at full speed takes (a slower machine only makes it write less)."""
    started = api.post(
        f"/v1/sandboxes/{rest_sandbox}/commands",
        json={"argv": ["python3", "-c", WRITER], "background": True},
    )
    assert started.status_code == 201, started.text
    deadline = time.monotonic() + 60
    while not (written := run(api, rest_sandbox, "cat /tmp/written 2>/dev/null")):
        assert time.monotonic() < deadline, "the writer never finished"
        time.sleep(0.5)
    pipes = 4 * 65536  # the sandbox's pipe and what the server's reader holds, generously
    paced = BUFFER_LIMIT_BYTES + (WRITE_S + 1) * UNREAD_OUTPUT_BYTES_PER_S + pipes
    assert int(written) <= paced, f"wrote {int(written) >> 20} MiB in {WRITE_S} s with nobody reading"
