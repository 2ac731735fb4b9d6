"""What a new user of the SDK (docs/sdk.md) and of the REST API (docs/api.md) meets on the obvious
mistakes: each error says what to change, against a real server and real sandboxes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agentcell.client import (
    AgentcellConnectionError,
    AsyncSandbox,
    AuthenticationError,
    InvalidArgumentError,
)
from tests.conftest import ServerFactory

RUN = {"suite": "test_hunt_sdk_docs", "run": uuid.uuid4().hex[:12]}


@pytest.fixture
async def sbx(server_url: str) -> AsyncIterator[AsyncSandbox]:
    async with AsyncSandbox.create(api_url=server_url, metadata=RUN) as sandbox:
        await sandbox.files.write("a.txt", b"data")
        yield sandbox


async def test_no_api_key_says_where_to_put_one(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no key at all (none given, AGENTCELL_API_KEY unset, no readable admin.key), the 401
    tells an SDK user how to give one, not only which header the server wanted."""
    monkeypatch.delenv("AGENTCELL_API_KEY", raising=False)
    monkeypatch.setenv("AGENTCELL_STATE_DIR", str(tmp_path))  # no admin.key there
    with pytest.raises(AuthenticationError) as caught:
        await AsyncSandbox.list(api_url=server_url)
    message = caught.value.message
    assert "AGENTCELL_API_KEY" in message and "api_key" in message, message
    assert str(tmp_path / "admin.key") in message, message


async def test_a_wrong_api_key_is_not_told_to_set_one(server_url: str) -> None:
    """A key that was sent but refused keeps the server's message (no hint about setting one)."""
    with pytest.raises(AuthenticationError) as caught:
        await AsyncSandbox.list(api_url=server_url, api_key="ac_nope_" + "x" * 32)
    assert "AGENTCELL_API_KEY" not in caught.value.message


def test_an_api_url_without_scheme_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """AGENTCELL_URL=127.0.0.1:8700 (no http://) is refused before sending, naming the variable."""
    monkeypatch.setenv("AGENTCELL_URL", "127.0.0.1:8700")
    with pytest.raises(InvalidArgumentError, match=r"AGENTCELL_URL.*http://127\.0\.0\.1:8700"):
        AsyncSandbox.create()


async def test_download_into_a_missing_directory_names_it(sbx: AsyncSandbox, tmp_path: Path) -> None:
    """The error names the directory that is missing, not a temporary file of the SDK's."""
    target = tmp_path / "nodir" / "a.txt"
    with pytest.raises(FileNotFoundError) as caught:
        await sbx.files.download("a.txt", target)
    assert caught.value.filename == str(target.parent), caught.value
    assert os.listdir(tmp_path) == []


async def test_download_of_a_file_onto_a_directory_names_it(sbx: AsyncSandbox, tmp_path: Path) -> None:
    """A file downloaded to an existing directory's path is refused with that path, nothing left."""
    with pytest.raises(IsADirectoryError) as caught:
        await sbx.files.download("a.txt", tmp_path)
    assert caught.value.filename == str(tmp_path), caught.value
    assert os.listdir(tmp_path) == []


def test_rest_body_without_json_content_type_says_so(server_url: str) -> None:
    """`curl -d '{...}'` sends form encoding: the 400 says to send Content-Type: application/json."""
    key = {"x-api-key": os.environ["AGENTCELL_API_KEY"]}
    reply = httpx.post(f"{server_url}/v1/sandboxes", content=b'{"timeout_s": 60}', headers={
        **key, "content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert reply.status_code == 400
    assert "Content-Type: application/json" in reply.json()["message"], reply.json()


async def sleepers(sbx: AsyncSandbox) -> list[str]:
    ps = await sbx.commands.run(["ps", "-eo", "args="])
    return [line for line in ps.stdout.splitlines() if line.startswith("sleep ")]


async def test_a_timeout_kills_what_the_command_started(sbx: AsyncSandbox) -> None:
    """`run("sleep 77; echo done", timeout_s=1)`: the timeout ends the whole command, not only its
    bash (whose `sleep` used to live on, orphaned, after the result said it was killed)."""
    result = await sbx.commands.run("sleep 77; echo done", timeout_s=1)
    assert result.timed_out and result.exit_code == 137
    assert await sleepers(sbx) == []


async def test_kill_of_a_background_command_kills_its_children(sbx: AsyncSandbox) -> None:
    """`handle.kill()` of `cd … && python3 -m http.server`-like lines ends what the line started."""
    handle = await sbx.commands.run("sleep 78 & sleep 79; echo done", background=True)
    await sbx.commands.run("sleep 0.2")
    await handle.kill()
    assert (await handle.wait()).exit_code == 137
    assert await sleepers(sbx) == []


async def test_cancelling_a_streaming_command_ends_it(sbx: AsyncSandbox) -> None:
    """Cancelling the task that awaits `run` ends the command in the sandbox, children included."""
    task = asyncio.create_task(sbx.commands.run("sleep 80; echo done"))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):  # the server notices the dropped stream at once; allow it 5 s
        if not (left := await sleepers(sbx)):
            break
        await asyncio.sleep(0.1)
    assert left == []


async def test_a_kill_right_after_the_start_is_not_lost(sbx: AsyncSandbox) -> None:
    """A kill sent before the command has made its own process group (its setsid) still kills it."""
    for _ in range(20):
        handle = await sbx.commands.run("sleep 81", background=True)
        await handle.kill()
        async with asyncio.timeout(5):
            assert (await handle.wait()).exit_code == 137


async def test_a_hung_server_cannot_hang_a_command_with_a_timeout(server_factory: ServerFactory) -> None:
    """`run(..., timeout_s=1)` against a server that stops answering (SIGSTOP) gives up after the
    command's timeout plus `request_timeout_s`, with AgentcellConnectionError, instead of waiting
    for ever; `run_code` likewise."""
    server = server_factory()
    async with AsyncSandbox.create(api_url=server.url, metadata=RUN) as created:
        sbx = await AsyncSandbox.connect(created.id, api_url=server.url, request_timeout_s=2)
        await sbx.commands.run("true")
        server.proc.send_signal(signal.SIGSTOP)
        try:
            for call in (
                sbx.commands.run("sleep 30", timeout_s=1),
                sbx.run_code("import time; time.sleep(30)", timeout_s=1),
            ):
                started = time.monotonic()
                with pytest.raises(AgentcellConnectionError, match="did not answer in time"):
                    await asyncio.wait_for(call, 20)
                assert time.monotonic() - started < 10
        finally:
            server.proc.send_signal(signal.SIGCONT)
            await sbx.aclose()
