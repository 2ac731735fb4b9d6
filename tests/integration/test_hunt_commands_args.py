"""Commands whose arguments or environment Linux would refuse to exec (E2BIG) are refused with a
400 that says what to change, instead of starting and ending at once with exit 126 and
"Argument list too long" on stderr: the API's own limits (a 256 KiB `cmd`) allowed them."""

from __future__ import annotations

import json

import httpx
import pytest


@pytest.fixture
def commands(api: httpx.Client, rest_sandbox: str) -> tuple[httpx.Client, str]:
    return api, f"/v1/sandboxes/{rest_sandbox}/commands"


@pytest.mark.parametrize(
    "body",
    [
        {"cmd": "echo " + "a" * 140_000},
        {"argv": ["echo", "é" * 70_000]},  # 70000 characters, 140000 bytes
        {"cmd": "true", "env": {"BIG": "x" * 32_000, **{f"V{i}": "y" * 32_000 for i in range(80)}}},
    ],
    ids=["long-cmd", "long-utf8-argument", "environment-too-large"],
)
def test_what_exec_would_refuse_is_a_400(commands: tuple[httpx.Client, str], body: dict[str, object]) -> None:
    api, url = commands
    reply = api.post(url, json=body)
    assert reply.status_code == 400, reply.text[:300]
    assert reply.json()["code"] == "invalid_argument"
    assert "stdin or in a file" in reply.json()["message"]


def test_the_longest_argument_linux_takes_still_runs(commands: tuple[httpx.Client, str]) -> None:
    api, url = commands
    reply = api.post(url, json={"argv": ["/bin/sh", "-c", "echo ${#0}", "a" * 131_071]})
    assert reply.status_code == 200, reply.text[:300]
    events = [json.loads(line) for line in reply.text.splitlines()]
    assert events[-1]["exit_code"] == 0 and events[1]["data"] == "131071\n", events
