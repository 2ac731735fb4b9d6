"""`sbx.pty` of the official `e2b` SDK (sync and async), unchanged, against a real agentcell server:
a bash on a real terminal inside the sandbox — typed input, output as `pty` data, resize, kill,
disconnect and reconnect — and the errors for terminal calls on a plain command."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from e2b import AsyncSandbox, CommandExitException, InvalidArgumentException, Sandbox, TimeoutException
from e2b.sandbox.commands.command_handle import PtySize

SIZE = PtySize(rows=24, cols=80)


@pytest.fixture(scope="module")
def sbx(e2b_env: str) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(timeout=300, metadata={"suite": "e2b-pty"})
    yield sandbox
    sandbox.kill()


@pytest.fixture
async def asbx(e2b_env: str) -> AsyncIterator[AsyncSandbox]:
    sandbox = await AsyncSandbox.create(timeout=300, metadata={"suite": "e2b-pty-async"})
    yield sandbox
    await sandbox.kill()


def text_of(chunks: list[bytes]) -> str:
    return b"".join(chunks).decode(errors="replace")


def test_bash_on_a_terminal(sbx: Sandbox) -> None:
    """Typed input runs in an interactive bash whose stdin is the sandbox's /dev/pts/N, with the
    requested size, TERM from the SDK, as the sandbox user; `exit` ends it with its status."""
    terminal = sbx.pty.create(SIZE, envs={"FOO": "bar"})
    # one line: input typed ahead while a command runs is echoed amid its output
    sbx.pty.send_stdin(terminal.pid, b"echo $((6*7)); tty; stty size; echo $TERM $FOO; id -un; exit 0\n")
    output: list[bytes] = []
    result = terminal.wait(on_pty=output.append)
    assert result.exit_code == 0
    text = text_of(output)
    assert re.search(r"[\r\n]42\r\n/dev/pts/\d+\r\n24 80\r\nxterm-256color bar\r\nuser\r\n", text), text


def test_resize_is_seen_by_the_command(sbx: Sandbox) -> None:
    """Update with a new size sets the window (stty and tput see it) before the next input, which
    comes as a client stream here."""
    terminal = sbx.pty.create(SIZE)
    sbx.pty.resize(terminal.pid, PtySize(rows=50, cols=132))
    sbx.pty.stream_input(terminal.pid, [b"stty size; ", "tput cols; exit\n"])  # StreamInput's pty
    output: list[bytes] = []
    assert terminal.wait(on_pty=output.append).exit_code == 0
    assert re.search(r"[\r\n]50 132\r\n132\r\n", text_of(output)), text_of(output)


def test_kill_ends_the_terminal(sbx: Sandbox) -> None:
    """kill SIGKILLs the shell: wait raises with 137, the pid is gone from the sandbox and the
    process list; killing an unknown pid says False."""
    terminal = sbx.pty.create(SIZE)
    assert terminal.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.pty.kill(terminal.pid) is True
    with pytest.raises(CommandExitException) as ended:
        terminal.wait()
    assert ended.value.exit_code == 137
    gone = sbx.commands.run(
        f"for i in $(seq 50); do kill -0 {terminal.pid} 2>/dev/null || exit 0; sleep 0.1; done; exit 1"
    )
    assert gone.exit_code == 0
    assert terminal.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.pty.kill(999999) is False


def test_timeout_bounds_the_terminal(sbx: Sandbox) -> None:
    """As for commands, `timeout` kills the terminal's shell once it passes."""
    terminal = sbx.pty.create(SIZE, timeout=1)
    with pytest.raises(TimeoutException):  # the SDK's own deadline; the server's kill follows
        terminal.wait()
    deadline = time.monotonic() + 5
    while terminal.pid in [p.pid for p in sbx.commands.list()]:
        assert time.monotonic() < deadline, "the terminal outlived its timeout"
        time.sleep(0.1)


def test_disconnect_and_connect_again(sbx: Sandbox) -> None:
    """A disconnected terminal keeps running; connect sees its output again and follows it."""
    terminal = sbx.pty.create(SIZE, envs={"FOO": "bar"})
    sbx.pty.send_stdin(terminal.pid, b"echo one-$FOO\n")
    first: list[bytes] = []
    for _, _, pty in terminal:
        first.append(pty or b"")
        if "one-bar\r\n" in text_of(first):
            break
    terminal.disconnect()
    again = sbx.pty.connect(terminal.pid)
    sbx.pty.send_stdin(terminal.pid, b"echo two-$FOO; exit\n")
    second: list[bytes] = []
    assert again.wait(on_pty=second.append).exit_code == 0
    assert "one-bar\r\n" in text_of(first) and "two-bar\r\n" in text_of(second)


def test_terminal_calls_on_a_plain_command(sbx: Sandbox) -> None:
    """A command without a terminal cannot be resized or sent pty input (InvalidArgument); a
    terminal's input cannot be closed. The sandbox's /dev/pts lists its own terminals only."""
    plain = sbx.commands.run("sleep 30", background=True, timeout=0)
    terminal = sbx.pty.create(SIZE)
    try:
        with pytest.raises(InvalidArgumentException):
            sbx.pty.resize(plain.pid, SIZE)
        with pytest.raises(InvalidArgumentException):
            sbx.pty.send_stdin(plain.pid, b"x")
        with pytest.raises(InvalidArgumentException):
            sbx.commands.close_stdin(terminal.pid)
        listed = sbx.commands.run("ls /dev/pts").stdout.split()
        assert listed[-1] == "ptmx" and all(name.isdigit() for name in listed[:-1]) and listed[:-1]
    finally:
        sbx.pty.kill(terminal.pid)
        sbx.commands.kill(plain.pid)


async def test_async_terminal(asbx: AsyncSandbox) -> None:
    """AsyncSandbox: on_data gets the terminal's bytes; resize, input and exit as in sync."""
    output: list[bytes] = []
    terminal = await asbx.pty.create(SIZE, on_data=output.append, cwd="/tmp")
    await asbx.pty.send_stdin(terminal.pid, b"echo $((6*7)); pwd; tty\n")
    await asbx.pty.resize(terminal.pid, PtySize(rows=30, cols=100))
    await asbx.pty.send_stdin(terminal.pid, b"stty size; exit 3\n")
    with pytest.raises(CommandExitException) as ended:
        await terminal.wait()
    assert ended.value.exit_code == 3
    text = text_of(output)
    for shown in (r"[\r\n]42\r\n", r"\n/tmp\r\n", r"\n/dev/pts/\d+\r\n", r"[\r\n]30 100\r\n"):
        assert re.search(shown, text), (shown, text)


async def test_async_kill(asbx: AsyncSandbox) -> None:
    terminal = await asbx.pty.create(SIZE, on_data=lambda _: None)
    assert await asbx.pty.kill(terminal.pid) is True
    with pytest.raises(CommandExitException) as ended:
        await terminal.wait()
    assert ended.value.exit_code == 137
    assert await asbx.pty.kill(terminal.pid) is False
