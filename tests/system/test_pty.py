"""Commands on a pseudo-terminal (`ExecSpec.terminal`): a real terminal inside the sandbox, confined
like every command, from the sandbox's own devpts, out of reach of the host's and other sandboxes'."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.errors import InvalidArgument, QuotaExceeded
from agentcell.server.sandbox.driver import ExecSpec, SandboxProcess, SandboxSpec, TerminalSize
from agentcell.server.sandbox.linux.driver import LinuxDriver
from tests.system.conftest import run

pytestmark = pytest.mark.system

SIZE = TerminalSize(rows=24, cols=80)
SCREEN = "; ".join(
    [
        "tty",
        "stty size",
        'echo "TERM=$TERM"',
        "id -u",
        "ps -o sid=,tty= -p $$",
        'echo "ns=$(readlink /proc/$$/ns/pid)"',
    ]
)

OPEN_ALL_PTYS = """
import os
fds = []
try:
    while True:
        fds.append(os.openpty())
except OSError as e:
    print(len(fds), e.errno)
"""
HOLD = """
import sys, time
sys.stdout.flush()
time.sleep(30)
"""


async def read_until(process: SandboxProcess, pattern: str, timeout_s: float = 10) -> str:
    """Terminal output until `pattern` (a regex) matches it."""
    seen = b""
    async with asyncio.timeout(timeout_s):
        while not re.search(pattern, seen.decode(errors="replace")):
            chunk = await process.stdout.read(4096)
            assert chunk, f"the terminal closed before {pattern!r}; it showed {seen!r}"
            seen += chunk
    return seen.decode(errors="replace")


@pytest.fixture
async def shell(linux_driver: LinuxDriver, sandbox: str) -> AsyncIterator[SandboxProcess]:
    spec = ExecSpec(argv=["/bin/bash", "--norc", "-i"], env={"TERM": "xterm-256color"}, terminal=SIZE)
    process = await linux_driver.exec(sandbox, spec)
    yield process
    process.send_signal(signal.SIGKILL)
    await asyncio.wait_for(process.wait(), 10)


async def test_a_real_terminal_inside_the_sandbox(
    linux_driver: LinuxDriver, sandbox: str, shell: SandboxProcess
) -> None:
    """stdin/stdout/stderr are /dev/pts/0 of the sandbox, the command's own session and controlling
    terminal, with the requested size, as the sandbox user in the sandbox's pid namespace."""
    await shell.write_stdin(f"{SCREEN}; echo END$((6*7))\n".encode())
    text = await read_until(shell, r"END42\r\n")
    assert "/dev/pts/0\r\n" in text and "\r\n24 80\r\n" in text and "TERM=xterm-256color" in text
    assert "\r\n1000\r\n" in text
    sid, tty = re.search(r"\r\n\s*(\d+) (pts/\d+)\r\n", text).groups()  # type: ignore[union-attr]
    assert (int(sid), tty) == (shell.pid, "pts/0")  # bash leads its own session on its terminal
    init_pidns = os.readlink(f"/proc/{linux_driver.init_pid(sandbox)}/ns/pid")
    assert f"ns={init_pidns}" in text
    assert (await shell.stderr.read()) == b""  # a terminal has one output stream


async def test_input_resize_and_interrupt(shell: SandboxProcess) -> None:
    """Typed input is echoed and run; a resize is seen by the command (SIGWINCH and stty); ^C
    interrupts the foreground job, not the shell."""
    await shell.write_stdin(b"echo $((6*7))\n")
    await read_until(shell, r"[\r\n]42\r\n")  # the result, not the echoed input
    await shell.write_stdin(b"trap 'echo WINCH' WINCH; sleep 30\n")
    await asyncio.sleep(0.3)
    shell.resize(TerminalSize(rows=50, cols=132))
    await shell.write_stdin(b"\x03")  # ^C ends the sleep; the trap then runs
    await shell.write_stdin(b"stty size\n")
    text = await read_until(shell, r"[\r\n]50 132\r\n")
    assert "WINCH" in text
    await shell.write_stdin(b"exit 7\n")
    assert (await asyncio.wait_for(shell.wait(), 10)).code == 7
    assert await asyncio.wait_for(shell.stdout.read(), 5) is not None  # output ends (EOF)
    with pytest.raises(InvalidArgument):
        await shell.close_stdin()


async def test_the_terminal_process_is_in_the_sandbox_cgroup(
    linux_driver: LinuxDriver, sandbox: str, shell: SandboxProcess
) -> None:
    """Same cgroups as the init; the host sees the command as a child of a sandbox process."""
    own = _cgroups(shell.host_pid)
    init = _cgroups(linux_driver.init_pid(sandbox))
    assert sorted(own) == sorted(init) and any(sandbox in line for line in own)
    assert os.readlink(f"/proc/{shell.host_pid}/ns/mnt") == os.readlink(
        f"/proc/{linux_driver.init_pid(sandbox)}/ns/mnt"
    )


def _cgroups(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cgroup").read_text().splitlines()


async def test_host_and_other_sandboxes_ptys_are_out_of_reach(
    linux_driver: LinuxDriver, sandbox: str, shell: SandboxProcess
) -> None:
    """The sandbox's /dev/pts is its own devpts: it lists only its own terminal, not the host's
    (several open here) nor another sandbox's, and its device differs from the host's."""
    host_ptys = [os.openpty() for _ in range(3)]
    await linux_driver.start(SandboxSpec(sandbox_id="sbx-2"))
    other = await linux_driver.exec("sbx-2", ExecSpec(argv=["sleep", "30"], terminal=SIZE))
    try:
        listed = await run(linux_driver, sandbox, ["ls", "/dev/pts"])
        assert listed.stdout.split() == ["0", "ptmx"]
        device = await run(linux_driver, sandbox, ["stat", "-c", "%d", "/dev/pts"])
        assert int(device.stdout) != os.stat("/dev/pts").st_dev
        other_device = await run(linux_driver, "sbx-2", ["stat", "-c", "%d", "/dev/pts"])
        assert int(other_device.stdout) not in (int(device.stdout), os.stat("/dev/pts").st_dev)
        for name in ("/dev/pts/1", "/dev/pts/2", "/dev/pts/3"):
            opened = await run(linux_driver, sandbox, ["sh", "-c", f"exec 3<>{name}"])
            assert opened.code != 0
    finally:
        for master, slave in host_ptys:
            os.close(master)
            os.close(slave)
        other.send_signal(signal.SIGKILL)
        await asyncio.wait_for(other.wait(), 10)


async def test_a_sandbox_holds_at_most_64_terminals(linux_driver: LinuxDriver, sandbox: str) -> None:
    """Its devpts has max=64, so one sandbox cannot use up the host's kernel.pty.max; a terminal
    asked for while the sandbox holds them all is QuotaExceeded."""
    result = await run(linux_driver, sandbox, ["python3", "-c", OPEN_ALL_PTYS])
    assert result.stdout.split() == ["64", "28"]  # ENOSPC
    holder = await linux_driver.exec(sandbox, ExecSpec(argv=["python3", "-c", OPEN_ALL_PTYS + HOLD]))
    assert (await asyncio.wait_for(holder.stdout.readline(), 10)).split() == [b"64", b"28"]
    with pytest.raises(QuotaExceeded):
        await linux_driver.exec(sandbox, ExecSpec(argv=["true"], terminal=SIZE))
    holder.send_signal(signal.SIGKILL)
    await holder.close_stdin()
    await asyncio.wait_for(holder.wait(), 10)


async def test_a_pipe_process_cannot_be_resized(linux_driver: LinuxDriver, sandbox: str) -> None:
    process = await linux_driver.exec(sandbox, ExecSpec(argv=["true"]))
    with pytest.raises(InvalidArgument):
        process.resize(SIZE)
    await process.close_stdin()
    await asyncio.wait_for(process.wait(), 10)
