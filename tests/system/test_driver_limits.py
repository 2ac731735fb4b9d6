"""Resource limits: a sandbox that exhausts pids, memory or disk hurts only itself."""

from __future__ import annotations

import asyncio
import os

import pytest

from agentcell.errors import QuotaExceeded
from agentcell.server.sandbox.driver import ExecSpec, SandboxSpec
from agentcell.server.sandbox.linux.driver import LinuxDriver
from agentcell.server.sandbox.linux.process import LinuxProcess
from tests.system.conftest import MiB, is_running, run

pytestmark = pytest.mark.system

# Every process forks until the kernel says EAGAIN (pids.max), then lingers a moment and exits;
# the first one reports whether anyone hit the limit.
BOUNDED_FORK_BOMB = r"""
import os, time
hit_r, hit_w = os.pipe()
first = os.getpid()
while True:
    try:
        os.fork()
    except BlockingIOError:
        os.write(hit_w, b"!")
        break
time.sleep(2)
if os.getpid() != first:
    os._exit(0)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
os.set_blocking(hit_r, False)
print("limit hit" if os.read(hit_r, 1 << 16) else "no limit")
"""


async def test_fork_bomb_is_contained(linux_driver: LinuxDriver) -> None:
    await linux_driver.start(SandboxSpec(sandbox_id="bomb", pids_max=40))
    bomb = asyncio.ensure_future(run(linux_driver, "bomb", ["python3", "-c", BOUNDED_FORK_BOMB]))
    await asyncio.sleep(1.0)
    usage = await linux_driver.usage("bomb")
    assert 30 <= usage.pids <= 40
    host = await asyncio.create_subprocess_exec("true")
    assert await host.wait() == 0  # the host can still fork
    result = await bomb
    assert result.stdout == "limit hit\n", result.stderr
    assert (await run(linux_driver, "bomb", ["echo", "alive"])).stdout == "alive\n"


async def fill_with_sleepers(driver: LinuxDriver, sandbox_id: str, limit: int) -> list[LinuxProcess]:
    """`sleep` commands until the sandbox is at its pids limit; the exec that found it full
    must say so as QuotaExceeded (it was a 500 `internal`, "fork: Resource temporarily
    unavailable")."""
    sleepers: list[LinuxProcess] = []
    with pytest.raises(QuotaExceeded) as refused:
        for _ in range(limit):
            sleepers.append(await driver.exec(sandbox_id, ExecSpec(argv=["sleep", "300"])))
    message = str(refused.value)
    assert f"limit of {limit} processes (pids)" in message and "kill the sandbox" in message, message
    assert len(sleepers) >= limit // 2 - 1, "each command costs its exec worker and itself"
    return sleepers


async def test_a_command_at_the_process_limit_is_refused_as_a_quota(linux_driver: LinuxDriver) -> None:
    """A sandbox at its pids limit refuses every command with QuotaExceeded naming the limit,
    for as long as it stays full; once some of its processes end, commands start again."""
    await linux_driver.start(SandboxSpec(sandbox_id="full", pids_max=16))
    sleepers = await fill_with_sleepers(linux_driver, "full", 16)
    with pytest.raises(QuotaExceeded, match="limit of 16 processes"):
        await linux_driver.exec("full", ExecSpec(argv=["true"]))
    for sleeper in sleepers[:2]:
        sleeper.send_signal(9)
        await asyncio.wait_for(sleeper.wait(), 10)
    for _ in range(100):  # their exec workers exit just after reporting
        if (await linux_driver.usage("full")).pids <= 14:
            break
        await asyncio.sleep(0.05)
    assert (await run(linux_driver, "full", ["echo", "alive"])).stdout == "alive\n"
    await linux_driver.stop("full")
    for sleeper in sleepers:  # (collecting each one's status closes its stdin pipe)
        await asyncio.wait_for(sleeper.wait(), 10)


async def test_memory_hog_dies_alone(linux_driver: LinuxDriver) -> None:
    """Allocating twice the limit kills that process (137), not the init or its neighbours."""
    await linux_driver.start(SandboxSpec(sandbox_id="mem", memory_bytes=128 * MiB))
    neighbour = await linux_driver.exec("mem", ExecSpec(argv=["sleep", "300"]))
    hog = await run(linux_driver, "mem", ["python3", "-c", f"x = b'x' * {256 * MiB}; print('survived')"])
    assert (hog.status.code, hog.status.signal) == (137, 9)
    assert "survived" not in hog.stdout
    assert (await run(linux_driver, "mem", ["echo", "alive"])).stdout == "alive\n"
    assert is_running(neighbour.host_pid)
    neighbour.send_signal(15)
    assert (await neighbour.wait()).code == 143


async def test_disk_fills_up_inside_only(linux_driver: LinuxDriver) -> None:
    """Writes past disk_bytes fail with ENOSPC in the sandbox; the host's disk is untouched."""
    await linux_driver.start(SandboxSpec(sandbox_id="disk", disk_bytes=32 * MiB))
    before = os.statvfs(linux_driver.state_dir)
    result = await run(linux_driver, "disk", ["dd", "if=/dev/zero", "of=/home/user/big", "bs=1M", "count=64"])
    after = os.statvfs(linux_driver.state_dir)
    assert result.code != 0 and "No space left on device" in result.stderr
    df = await run(linux_driver, "disk", ["df", "-B1", "--output=size", "/tmp"])
    assert int(df.stdout.split()[-1]) == 32 * MiB
    # dd tried 64 MiB and the tmpfs took 32 MiB, all in RAM: the host disk (which other writers
    # share, hence the slack) did not lose anything like that.
    assert (before.f_bavail - after.f_bavail) * before.f_frsize < 24 * MiB
    assert (await run(linux_driver, "disk", ["rm", "/home/user/big"])).code == 0
    assert (
        await run(linux_driver, "disk", ["sh", "-c", "echo ok > /tmp/small && cat /tmp/small"])
    ).stdout == "ok\n"


async def test_cpu_quota_is_set(linux_driver: LinuxDriver) -> None:
    await linux_driver.start(SandboxSpec(sandbox_id="cpu", cpu_millis=250))
    result = await run(linux_driver, "cpu", ["cat", "/proc/self/cgroup"])
    assert result.code == 0
    busy = "import time\nend = time.time() + 1\nwhile time.time() < end: pass"
    before = (await linux_driver.usage("cpu")).cpu_ns
    await run(linux_driver, "cpu", ["python3", "-c", busy])
    used_s = ((await linux_driver.usage("cpu")).cpu_ns - before) / 1e9
    assert 0.1 < used_s < 0.5  # a quarter of a core for ~1 s of wall time
