"""Commands the sandbox's init starts (init_channel.py): confined as a worker's are, without the
spawner, holding no server fd but their stdio, and running on when the node's end of the channel
closes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import pytest

from agentcell.errors import NotRunning
from agentcell.server.sandbox.driver import ExecSpec
from agentcell.server.sandbox.linux.driver import LinuxDriver
from agentcell.server.sandbox.linux.process import start_process
from tests.system.conftest import run, through_workers

pytestmark = pytest.mark.system

WHO_AM_I = """
import os
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(os.getppid(), os.getsid(0) == os.getpid(), open("/proc/self/oom_score_adj").read().strip())
for key in ("Uid", "CapEff", "CapBnd", "NoNewPrivs", "Seccomp"):
    print(key, status[key].split()[0])
import resource
print("nofile", *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


async def test_a_command_the_init_forks_is_confined_as_a_workers_is(
    linux_driver: LinuxDriver, sandbox: str
) -> None:
    """The init's child, in its own session, killable by the OOM killer (the init is not), as
    the sandbox user with no capabilities, no_new_privs and the seccomp filter, and the sandbox's
    open-file limit (the init raised its own)."""
    by_init = (await run(linux_driver, sandbox, ["python3", "-c", WHO_AM_I])).stdout.splitlines()
    assert by_init[0] == "1 True 0", by_init
    assert by_init[1:6] == [
        "Uid 1000",
        "CapEff 0000000000000000",
        "CapBnd 0000000000000000",
        "NoNewPrivs 1",
        "Seccomp 2",
    ]
    through_workers(linux_driver, sandbox)
    by_worker = (await run(linux_driver, sandbox, ["python3", "-c", WHO_AM_I])).stdout.splitlines()
    assert by_worker[0] != by_init[0] and by_worker[1:] == by_init[1:]


async def test_commands_start_without_the_spawner(linux_driver: LinuxDriver, sandbox: str) -> None:
    spawner = linux_driver.spawner_pid()
    assert spawner is not None
    os.kill(spawner, signal.SIGKILL)
    assert (await run(linux_driver, sandbox, ["echo", "hi"])).stdout == "hi\n"
    assert linux_driver.spawner_pid() is None  # no new one was needed


async def test_commands_run_on_after_the_channel_closes(linux_driver: LinuxDriver, sandbox: str) -> None:
    """As when the server dies (or releases the instance): the init takes no more requests, and
    its commands run to their end (output written after the close still arrives; their exit
    status is nobody's to report); the init outlives them, and commands start through workers."""
    finishing = await linux_driver.exec(sandbox, ExecSpec(argv=["sh", "-c", "sleep 0.3; echo done; exit 3"]))
    through_workers(linux_driver, sandbox)
    assert await asyncio.wait_for(finishing.stdout.read(), 10) == b"done\n"
    await asyncio.wait_for(finishing.wait(), 10)
    assert (await run(linux_driver, sandbox, ["echo", "again"])).stdout == "again\n"
    assert linux_driver._instances[sandbox].is_alive()


async def test_a_start_after_the_init_died_is_not_running(linux_driver: LinuxDriver, sandbox: str) -> None:
    target = linux_driver._instances[sandbox].target
    assert target.channel is not None
    signal.pidfd_send_signal(target.init_pidfd, signal.SIGKILL)
    with pytest.raises(NotRunning, match="gone"):
        await start_process(target, ["true"], "/", {})


async def test_a_running_command_holds_no_server_fd_but_its_stdio(
    linux_driver: LinuxDriver, sandbox: str
) -> None:
    """Its exit comes over the instance's channel: no control pipe per command (a worker's has one)."""
    await run(linux_driver, sandbox, ["true"])  # whatever the loop opens once is not counted
    before = open_fds()
    process = await linux_driver.exec(sandbox, ExecSpec(argv=["sleep", "30"]))
    # (by number and target, so that an fd something else closed meanwhile is not counted; and not
    # what the driver's threads read in /proc meanwhile, such as /proc/self/task for its children)
    opened = {(fd, target) for fd, target in open_fds() - before if not target.startswith("/proc/")}
    assert [target.split(":")[0] for _, target in opened] == ["pipe"] * 3, opened  # its stdio
    process.send_signal(signal.SIGKILL)
    assert (await asyncio.wait_for(process.wait(), 10)).signal == signal.SIGKILL


def open_fds() -> set[tuple[str, str]]:
    """This process's open file descriptors, each with what it points to."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # (the listing's own, closed by now)
            found.add((fd, os.readlink(f"/proc/self/fd/{fd}")))
    return found
