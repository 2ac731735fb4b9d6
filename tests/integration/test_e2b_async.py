"""The official E2B SDKs' async classes (`AsyncSandbox`) against a real agentcell server, configured
by environment variables only: lifecycle, commands with streaming callbacks, stdin and kill, files,
the WatchDir stream, and run_code with state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from e2b import AsyncSandbox as BaseAsyncSandbox
from e2b import CommandExitException, FilesystemEvent, FilesystemEventType, SandboxQuery, TimeoutException
from e2b_code_interpreter import AsyncSandbox


@pytest.fixture
async def sbx(e2b_env: str) -> AsyncIterator[AsyncSandbox]:
    sandbox = await AsyncSandbox.create(timeout=300, metadata={"suite": "e2b-async"})
    yield sandbox
    await sandbox.kill()


async def test_lifecycle(e2b_env: str) -> None:
    sandbox = await BaseAsyncSandbox.create(timeout=120, metadata={"suite": "e2b-async-life"})
    try:
        info = await sandbox.get_info()
        assert info.metadata == {"suite": "e2b-async-life"}
        listed = await BaseAsyncSandbox.list(
            query=SandboxQuery(metadata={"suite": "e2b-async-life"})
        ).next_items()
        assert [s.sandbox_id for s in listed] == [sandbox.sandbox_id]
        await sandbox.set_timeout(200)
        again = await BaseAsyncSandbox.connect(sandbox.sandbox_id)
        assert (await again.commands.run("echo again")).stdout == "again\n"
    finally:
        assert await sandbox.kill() is True
    assert await sandbox.is_running() is False


async def test_commands_stream_stdin_kill(sbx: AsyncSandbox) -> None:
    lines: list[str] = []
    result = await sbx.commands.run("echo a; sleep 0.05; echo b", on_stdout=lines.append)
    assert (result.stdout, "".join(lines)) == ("a\nb\n", "a\nb\n")
    with pytest.raises(CommandExitException) as failed:
        await sbx.commands.run("exit 7")
    assert failed.value.exit_code == 7
    handle = await sbx.commands.run("read line; echo got:$line", background=True, stdin=True, timeout=0)
    await sbx.commands.send_stdin(handle.pid, "x\n")
    assert (await handle.wait()).stdout == "got:x\n"
    streamed = await sbx.commands.run("cat", background=True, stdin=True, timeout=0)

    async with sbx.commands.stream_input(streamed.pid) as stdin:
        await stdin.send("p\n")
        await stdin.send(b"q\n")
    await sbx.commands.close_stdin(streamed.pid)
    assert (await streamed.wait()).stdout == "p\nq\n"
    sleeper = await sbx.commands.run("sleep 30", background=True, timeout=0)
    assert await sbx.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException):
        await sleeper.wait()
    with pytest.raises(TimeoutException):
        await sbx.commands.run("sleep 5", timeout=1)


async def test_files_and_watch_stream(sbx: AsyncSandbox) -> None:
    await sbx.files.make_dir("w")
    events: list[FilesystemEvent] = []
    handle = await sbx.files.watch_dir("w", on_event=events.append)
    await sbx.files.write("w/f.txt", b"data")
    for _ in range(50):
        if events:
            break
        await asyncio.sleep(0.1)
    await handle.stop()
    assert (events[0].name, events[0].type) == ("f.txt", FilesystemEventType.CREATE)
    assert await sbx.files.read("w/f.txt") == "data"
    assert [e.name for e in await sbx.files.list("w")] == ["f.txt"]
    await sbx.files.rename("w/f.txt", "w/g.txt")
    assert await sbx.files.exists("w/g.txt") and not await sbx.files.exists("w/f.txt")
    await sbx.files.remove("w")
    assert not await sbx.files.exists("w")


async def test_run_code_state_and_callbacks(sbx: AsyncSandbox) -> None:
    await sbx.run_code("n = 10")
    seen: list[str] = []
    execution = await sbx.run_code("print(n); n * 2", on_stdout=lambda m: seen.append(m.line))
    assert (execution.text, seen) == ("20", ["10\n"])
    js = await sbx.create_code_context(language="javascript")
    assert (await sbx.run_code("[1, 2].length", context=js)).text == "2"
