"""Commands started without stdio (ExecSpec.stdio=False, a function instance's server): /dev/null
in and out inside the sandbox, and none of the node's fds held (the init reports the exit on the
instance's channel; a worker's command holds its control pipe)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from agentcell.errors import InvalidArgument
from agentcell.server.sandbox.driver import ExecSpec, TerminalSize
from agentcell.server.sandbox.linux.driver import LinuxDriver
from tests.system.conftest import run, through_workers

pytestmark = pytest.mark.system


def no_stdio(script: str) -> ExecSpec:
    return ExecSpec(argv=["/bin/bash", "-c", script], stdio=False)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_its_stdio_is_the_sandboxs_dev_null(linux_driver: LinuxDriver, sandbox: str) -> None:
    """Reading gets end of file at once, and what it prints is lost, not kept by the node."""
    script = "cat; echo cat $? > cat.txt; stat -L -c %t:%T /dev/null /proc/$$/fd/[012] > fds.txt; echo lost"
    process = await linux_driver.exec(sandbox, no_stdio(script))
    await process.close_stdin()  # nothing to close: a no-op
    with pytest.raises(InvalidArgument, match="without stdin"):
        await process.write_stdin(b"lost")
    assert await process.stdout.read() == b"" and await process.stderr.read() == b""
    assert (await asyncio.wait_for(process.wait(), 30)).code == 0
    report = await run(linux_driver, sandbox, ["cat", "cat.txt", "fds.txt"])
    assert report.stdout == "cat 0\n" + "1:3\n" * 4  # char device 1,3: /dev/null, as the sandbox's own


@pytest.mark.usefixtures("steady_fds")
@pytest.mark.parametrize("by_worker", [False, True], ids=["by-init", "by-worker"])
async def test_the_node_holds_no_fd_but_a_workers_control_pipe_and_signals_still_reach_it(
    linux_driver: LinuxDriver, sandbox: str, by_worker: bool
) -> None:
    if by_worker:
        through_workers(linux_driver, sandbox)
    await run(linux_driver, sandbox, ["true"])  # the spawner and its socket exist from here on
    before = open_fds()
    sleepers = [await linux_driver.exec(sandbox, no_stdio("exec sleep 600")) for _ in range(4)]
    # no stdio pipes, no pidfd held; a worker's control pipe
    assert open_fds() - before == (len(sleepers) if by_worker else 0)
    for sleeper in sleepers:
        sleeper.send_signal(signal.SIGTERM)
    statuses = await asyncio.wait_for(asyncio.gather(*(s.wait() for s in sleepers)), 30)
    assert {(s.code, s.signal) for s in statuses} == {(128 + signal.SIGTERM, signal.SIGTERM)}
    assert open_fds() == before


async def test_a_terminal_cannot_go_without_stdio(linux_driver: LinuxDriver, sandbox: str) -> None:
    spec = ExecSpec(argv=["true"], terminal=TerminalSize(24, 80), stdio=False)
    with pytest.raises(InvalidArgument, match="terminal"):
        await linux_driver.exec(sandbox, spec)
