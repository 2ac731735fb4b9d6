"""A pause costs time in proportion to the data a sandbox holds, whatever the shape of its holes:
a file with one byte every 4 MiB (16 MiB of disk, 16 GiB of size) must not make the server read
and hash every byte of 16 GiB (it used to: ~40 s of server CPU per pause, and as long again to
resume, from a sandbox using 16 MiB; a 1 GiB sandbox made it hours)."""

from __future__ import annotations

import time

import httpx

from agentcell.client import Sandbox

SPARSE_BYTES = (
    "cd; python3 -c \"import os; fd = os.open('dots', os.O_CREAT | os.O_WRONLY); "
    '[os.pwrite(fd, bytes([i % 251 + 1]), i << 22) for i in range(4096)]"; echo note > keep.txt'
)
# The bytes where they were, the size and the blocks used (holes still holes), without reading 16 GiB.
CHECK = (
    "cd; python3 -c \"import os; fd = os.open('dots', os.O_RDONLY); "
    'print(all(os.pread(fd, 1, i << 22) == bytes([i % 251 + 1]) for i in range(4096)))"; '
    "stat -c '%s %b' dots; cat keep.txt"
)


def test_a_byte_every_4_mib_pauses_and_resumes_in_seconds(server_url: str, api: httpx.Client) -> None:
    sbx = Sandbox.create(api_url=server_url, disk_mb=64, timeout_s=120)
    try:
        made = sbx.commands.run(SPARSE_BYTES)
        assert made.exit_code == 0, made.stderr
        before = sbx.commands.run(CHECK).stdout
        assert before.startswith("True\n"), before
        started = time.monotonic()
        assert api.post(f"/v1/sandboxes/{sbx.id}/pause", timeout=300).status_code == 200
        paused_s = time.monotonic() - started
        resumed = api.post(f"/v1/sandboxes/{sbx.id}/resume", timeout=300)
        assert resumed.status_code == 200, resumed.json()
        took = (round(paused_s, 1), round(time.monotonic() - started - paused_s, 1))
        assert sbx.commands.run(CHECK).stdout == before
        assert took[0] < 10 and took[1] < 10, took
    finally:
        api.delete(f"/v1/sandboxes/{sbx.id}")
        sbx.close()
