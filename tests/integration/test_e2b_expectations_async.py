"""What E2B's own SDK test suites expect where the async SDK (`AsyncSandbox`) takes another path than
the sync one: callbacks that fire while a command still runs, a second terminal connection beside
the first, and the watch stream's events pushed to `on_event`. Against a real agentcell server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest
from e2b import (
    AsyncSandbox,
    FilesystemEvent,
    FilesystemEventType,
    NotFoundException,
    Sandbox,
    SandboxException,
)
from e2b.sandbox.commands.command_handle import PtySize

WAIT_S = 10


@pytest.fixture(scope="module")
def sandbox_id(e2b_env: str) -> Iterator[str]:
    """One sandbox for the module; each test connects its own AsyncSandbox (on its own loop)."""
    sandbox = Sandbox.create(timeout=300, metadata={"suite": "e2b-expectations-async"})
    yield sandbox.sandbox_id
    sandbox.kill()


async def test_stdout_callbacks_fire_while_the_command_runs(sandbox_id: str) -> None:
    """A background `cat` echoes input sent without a newline; the callback sees it and the
    handle's `stdout` holds it before the command ends."""
    asbx = await AsyncSandbox.connect(sandbox_id)
    for text in ("no newline", "!@#$%^&*()_+", "two\nlines"):
        await echo_through_cat(asbx, text)


async def echo_through_cat(asbx: AsyncSandbox, text: str) -> None:
    arrived = asyncio.Event()
    handle = await asbx.commands.run(
        "cat", background=True, stdin=True, timeout=0, on_stdout=lambda _: arrived.set()
    )
    await asbx.commands.send_stdin(handle.pid, text)
    while handle.stdout != text:
        await asyncio.wait_for(arrived.wait(), WAIT_S)
        arrived.clear()
    assert await asbx.commands.kill(handle.pid) is True


async def test_a_second_terminal_connection_sees_the_output_too(sandbox_id: str) -> None:
    asbx = await AsyncSandbox.connect(sandbox_id)
    first: list[bytes] = []
    second: list[bytes] = []
    terminal = await asbx.pty.create(PtySize(rows=24, cols=80), on_data=first.append, envs={"ABC": "123"})
    joined = await asbx.pty.connect(terminal.pid, on_data=second.append)
    assert joined.pid == terminal.pid
    await asbx.pty.send_stdin(terminal.pid, b"echo $((6*7))\n")
    await asbx.pty.send_stdin(terminal.pid, b"echo $ABC; exit\n")
    assert (await joined.wait()).exit_code == 0
    assert (await terminal.wait()).exit_code == 0
    for output in (first, second):  # the echo of input is there too: match the printed lines
        text = b"".join(output).decode()
        assert re.search(r"[\r\n]42\r\n", text) and re.search(r"[\r\n]123\r\n", text), text


async def test_watch_stream_pushes_rewrites_and_nested_changes(sandbox_id: str) -> None:
    asbx = await AsyncSandbox.connect(sandbox_id)
    await asbx.files.write("awatch/seen.txt", "before")
    events: list[tuple[str, FilesystemEventType]] = []
    changed = asyncio.Event()

    def on_event(event: FilesystemEvent) -> None:
        events.append((event.name, event.type))
        changed.set()

    async def until(expected: tuple[str, FilesystemEventType]) -> None:
        while expected not in events:
            await asyncio.wait_for(changed.wait(), WAIT_S)
            changed.clear()

    handle = await asbx.files.watch_dir("awatch", on_event=on_event, recursive=True)
    await asbx.files.write("awatch/seen.txt", "after!")
    await until(("seen.txt", FilesystemEventType.WRITE))
    await asbx.files.make_dir("awatch/nested")
    await until(("nested", FilesystemEventType.CREATE))
    await asbx.files.write("awatch/nested/n.txt", "content")
    await until(("nested/n.txt", FilesystemEventType.WRITE))
    await handle.stop()  # type: ignore[no-untyped-call]  # (the e2b SDK leaves it unannotated)
    with pytest.raises(SandboxException):
        await asbx.files.watch_dir("awatch/seen.txt", on_event=on_event)
    with pytest.raises(NotFoundException):
        await asbx.files.watch_dir("awatch/none", on_event=on_event)
    await asbx.files.remove("awatch")
