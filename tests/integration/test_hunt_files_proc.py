"""/proc through the files API: what the kernel shows there depends on who reads it, and the
files API reads as the server (its uts, net and ipc namespaces), so reads are refused with a 400
that says to use a command; they showed the host's hostname and sysctls, and a process's memory
file failed with a 500 (EIO)."""

from __future__ import annotations

import json

import httpx
import pytest


@pytest.fixture
def sandbox(api: httpx.Client, rest_sandbox: str) -> tuple[httpx.Client, str]:
    return api, rest_sandbox


def refused(api: httpx.Client, sandbox: str, path: str, endpoint: str = "") -> str:
    reply = api.get(f"/v1/sandboxes/{sandbox}/files{endpoint}", params={"path": path})
    assert reply.status_code == 400, reply.text[:300]
    message: str = reply.json()["message"]
    assert f"cat {path}" in message, message
    return message


def test_proc_files_are_read_with_a_command_not_the_files_api(sandbox: tuple[httpx.Client, str]) -> None:
    api, sid = sandbox
    refused(api, sid, "/proc/sys/kernel/hostname")
    reply = api.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": "cat /proc/sys/kernel/hostname"})
    events = [json.loads(line) for line in reply.text.splitlines()]
    assert events[1]["data"].startswith("sbx"), events  # the sandbox's own, through a command


def test_a_process_memory_file_is_a_400_not_a_500(sandbox: tuple[httpx.Client, str]) -> None:
    api, sid = sandbox
    reply = api.post(f"/v1/sandboxes/{sid}/commands", json={"argv": ["sleep", "60"], "background": True})
    pid = reply.json()["pid"]
    for name in ("mem", "pagemap", "environ"):
        refused(api, sid, f"/proc/{pid}/{name}")
    refused(api, sid, f"/proc/{pid}/environ", "/archive")
    assert api.get(f"/v1/sandboxes/{sid}/files/stat", params={"path": f"/proc/{pid}/mem"}).status_code == 200
