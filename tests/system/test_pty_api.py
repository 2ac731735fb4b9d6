"""Terminals through agentcell's own REST API and SDK, on a real server: `pty` on a command, typing
into it, resize, kill; bad sizes and terminal calls on a plain command get the error envelope."""

from __future__ import annotations

import contextlib
import re

import httpx
import pytest

from agentcell.client import AsyncSandbox, Sandbox
from agentcell.client.commands import AsyncCommandHandle
from agentcell.client.errors import InvalidArgumentError
from agentcell.protocol.commands import OutputEvent
from tests.conftest import AUTH

pytestmark = pytest.mark.system


async def until_shown(term: AsyncCommandHandle, pattern: str) -> None:
    shown = ""
    async with contextlib.aclosing(term.events()) as events:
        async for event in events:
            shown += event.data if isinstance(event, OutputEvent) else ""
            if re.search(pattern, shown):
                return
    raise AssertionError(f"the terminal ended before {pattern!r}: {shown!r}")


async def test_sdk_terminal_input_resize_and_exit(server_url: str) -> None:
    """open_terminal runs a login bash on a terminal; typed input runs; resize is seen; the exit
    status is the end event's; the process is listed with pty=True while it runs."""
    async with AsyncSandbox.create(api_url=server_url) as sbx:
        term = await sbx.commands.open_terminal(rows=24, cols=80, env={"FOO": "bar"})
        assert [p.pty for p in await sbx.commands.list() if p.process_id == term.process_id] == [True]
        await term.send_stdin("echo $((6*7)) $FOO $TERM; tty; stty size\n")
        await until_shown(term, r"[\r\n]24 80\r\n")  # else the resize would come before stty ran
        await term.resize(40, 120)
        await term.send_stdin("stty size; exit 5\n")
        result = await term.wait()
        assert result.exit_code == 5 and result.stderr == ""
        pattern = r"[\r\n]42 bar xterm-256color\r\n/dev/pts/\d+\r\n24 80\r\n[\s\S]*[\r\n]40 120\r\n"
        assert re.search(pattern, result.stdout), result.stdout


def test_sync_sdk_terminal_kill(server_url: str) -> None:
    with Sandbox.create(api_url=server_url) as sbx:
        term = sbx.commands.open_terminal(["/bin/sh"], rows=10, cols=20, timeout_s=30)
        term.resize(11, 21)
        term.send_stdin("stty size\n")
        term.kill()
        result = term.wait()
        assert (result.exit_code, result.signal) == (137, 9)


def test_rest_errors(server_url: str) -> None:
    """Sizes out of range, closing a terminal's input and resizing a plain command are 400s with
    the envelope; resizing an unknown process is a 404."""
    with httpx.Client(headers=AUTH, base_url=server_url, timeout=30) as api:
        sandbox_id = api.post("/v1/sandboxes", json={}).raise_for_status().json()["id"]
        base = f"/v1/sandboxes/{sandbox_id}"
        try:
            bad = api.post(f"{base}/commands", json={"cmd": "true", "pty": {"rows": 0, "cols": 80}})
            assert bad.status_code == 400 and bad.json()["code"] == "invalid_argument"
            pty = {"rows": 24, "cols": 80}
            term = api.post(f"{base}/commands", json={"cmd": "cat", "background": True, "pty": pty}).json()
            closed = api.post(
                f"{base}/processes/{term['process_id']}/stdin", json={"data": "", "close": True}
            )
            assert closed.status_code == 400 and "cannot be closed" in closed.json()["message"]
            plain = api.post(f"{base}/commands", json={"cmd": "sleep 30", "background": True}).json()
            resized = api.post(f"{base}/processes/{plain['process_id']}/resize", json=pty)
            assert resized.status_code == 400 and "no terminal" in resized.json()["message"]
            assert api.post(f"{base}/processes/proc_nope/resize", json=pty).status_code == 404
            typo = api.post(f"{base}/processes/{term['process_id']}/resize", json={"rows": 5, "colz": 5})
            assert typo.status_code == 400
        finally:
            api.delete(f"/v1/sandboxes/{sandbox_id}")


async def test_sdk_refuses_a_bad_size_before_sending(server_url: str) -> None:
    async with AsyncSandbox.create(api_url=server_url) as sbx:
        with pytest.raises(InvalidArgumentError):
            await sbx.commands.open_terminal(rows=0)
