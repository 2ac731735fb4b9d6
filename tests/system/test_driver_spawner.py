"""The spawner (one `acell-helper serve` per driver forks every worker): losing it loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import platform
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcell.errors import InvalidArgument
from agentcell.server.sandbox.driver import ExecSpec, SandboxSpec
from agentcell.server.sandbox.linux.driver import LinuxDriver
from agentcell.server.sandbox.linux.process import wait_readable
from agentcell.server.sandbox.linux.spawner import UNREPORTED_WORKER_S
from tests.system.conftest import is_running, make_driver, run, through_workers

pytestmark = pytest.mark.system


@pytest.fixture
def test_start() -> int:
    """Clock ticks since boot when the test began: zombies started earlier are an earlier test's
    (pytest's children all share this process) and not this test's to answer for."""
    return uptime_ticks()


def uptime_ticks() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


async def no_zombies_within(timeout_s: float, since: int) -> bool:
    """A worker the dead spawner forked but never reported exits on its own a moment later and is
    reaped in the background: allow that moment, no more."""
    deadline = time.monotonic() + timeout_s
    while zombie_children(since):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def described(pids: list[int]) -> str:
    """`pid (command name)` of each, for a failure message: a zombie keeps its name."""
    names = []
    for pid in pids:
        try:
            names.append(f"{pid} ({Path(f'/proc/{pid}/comm').read_text().strip()})")
        except OSError:
            names.append(f"{pid} (gone)")
    return ", ".join(names)


def zombie_children(since: int) -> list[int]:
    """Our own children started at or after `since` (clock ticks since boot) that have exited but
    were never reaped."""
    zombies = []
    for task in os.listdir("/proc/self/task"):
        for child in Path(f"/proc/self/task/{task}/children").read_text().split():
            try:
                fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            state, start_ticks = fields[0], int(fields[19])  # stat fields 3 and 22
            if state == "Z" and start_ticks >= since:
                zombies.append(int(child))
    return zombies


async def wait_gone(pid: int, timeout_s: float = 5) -> bool:
    """True once the process has exited (woken by its pidfd)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        await asyncio.wait_for(wait_readable(pidfd), timeout_s)
    finally:
        os.close(pidfd)
    return not is_running(pid)


async def test_commands_outlive_a_killed_spawner(
    linux_driver: LinuxDriver, sandbox: str, test_start: int
) -> None:
    """Running commands keep their streams and exit status; the next exec starts a new spawner
    and the orphaned workers are reaped by the driver."""
    through_workers(linux_driver, sandbox)
    process = await linux_driver.exec(sandbox, ExecSpec(argv=["sh", "-c", "sleep 0.5; echo done; exit 3"]))
    spawner = linux_driver.spawner_pid()
    assert spawner is not None
    os.kill(spawner, signal.SIGKILL)
    assert await wait_gone(spawner)

    out, status = await asyncio.wait_for(asyncio.gather(process.stdout.read(), process.wait()), 10)
    assert (out, status.code) == (b"done\n", 3)
    assert (await run(linux_driver, sandbox, ["echo", "again"])).stdout == "again\n"
    assert linux_driver.spawner_pid() not in (None, spawner)
    await asyncio.sleep(0.1)
    assert (zombies := zombie_children(test_start)) == [], described(zombies)


async def test_a_spawner_lost_mid_start_fails_the_start_cleanly(
    linux_driver: LinuxDriver, test_start: int
) -> None:
    """Starts in flight when the spawner dies fail with an error or complete; either way the
    driver can start sandboxes again and leaves nothing behind (checked by the fixture)."""
    await linux_driver.start(SandboxSpec(sandbox_id="first"))
    spawner = linux_driver.spawner_pid()
    assert spawner is not None
    starts = [asyncio.ensure_future(linux_driver.start(SandboxSpec(sandbox_id=f"s{i}"))) for i in range(5)]
    await asyncio.sleep(0)
    os.kill(spawner, signal.SIGKILL)
    results = await asyncio.gather(*starts, return_exceptions=True)
    assert all(r is None or "spawner" in str(r) or "could not start" in str(r) for r in results), results
    await linux_driver.start(SandboxSpec(sandbox_id="after"))
    assert (await run(linux_driver, "after", ["true"])).code == 0
    assert await no_zombies_within(UNREPORTED_WORKER_S, test_start), described(zombie_children(test_start))


async def test_the_spawner_ends_with_the_driver(
    tmp_path: Path, prebuilt_helper: Path, test_start: int
) -> None:
    driver = make_driver(tmp_path / "state", prebuilt_helper)
    await driver.start(SandboxSpec(sandbox_id="one"))
    spawner = driver.spawner_pid()
    assert spawner is not None and is_running(spawner)
    await driver.aclose()
    assert await wait_gone(spawner)
    assert (zombies := zombie_children(test_start)) == [], described(zombies)


async def test_nul_bytes_cannot_smuggle_options(linux_driver: LinuxDriver, sandbox: str) -> None:
    """Requests are NUL-separated strings: a NUL in a path is refused, not split into two."""
    with pytest.raises(InvalidArgument, match="NUL"):
        await linux_driver.exec(sandbox, ExecSpec(argv=["true"], cwd="x\0--cgroup-procs\0/tmp/x"))
    with pytest.raises(InvalidArgument, match="NUL"):
        await linux_driver.exec(sandbox, ExecSpec(argv=["echo", "a\0b"]))


IGNORED_BY_THE_SERVER = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGRTMIN)
"""a background job's, nohup's, and a real-time one"""
LIBC_OWN_SIGNAL = 32
"""glibc keeps it for thread cancellation and its sigaction refuses it, but a parent's raw system
call may leave it ignored (a CI runner here did)"""
RT_SIGACTION = {"x86_64": 13, "aarch64": 134}[platform.machine()]


class _KernelSigaction(ctypes.Structure):
    _fields_ = [
        ("handler", ctypes.c_void_p),
        ("flags", ctypes.c_ulong),
        ("restorer", ctypes.c_void_p),
        ("mask", ctypes.c_ulong),
    ]


@contextlib.contextmanager
def ignored_by_system_call(sig: int) -> Iterator[None]:
    libc = ctypes.CDLL(None, use_errno=True)
    ignore, before = _KernelSigaction(handler=1), _KernelSigaction()  # 1: SIG_IGN
    assert libc.syscall(RT_SIGACTION, sig, ctypes.byref(ignore), ctypes.byref(before), 8) == 0
    try:
        yield
    finally:
        libc.syscall(RT_SIGACTION, sig, ctypes.byref(before), None, 8)


async def test_signals_the_server_ignores_are_not_ignored_in_a_sandbox(
    tmp_path: Path, prebuilt_helper: Path
) -> None:
    """A server started as a background job or under nohup ignores SIGINT, SIGQUIT or SIGHUP (a
    supervisor may leave others), and exec keeps an ignored signal ignored: the sandbox's programs
    (its init, a command, one it starts) must still get every signal at its default, or ^C and a
    code run's interrupt do nothing. (Whatever this test process ignored already counts too.)"""
    driver = make_driver(tmp_path / "state", prebuilt_helper)
    try:
        before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in IGNORED_BY_THE_SERVER}
        try:
            with ignored_by_system_call(LIBC_OWN_SIGNAL):
                await driver.start(SandboxSpec(sandbox_id="background"))  # its spawner starts here
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)
        status = await run(driver, "background", ["sh", "-c", "cat /proc/1/status /proc/self/status"])
    finally:
        await driver.aclose()
    ignored = [line.split()[1] for line in status.stdout.splitlines() if line.startswith("SigIgn:")]
    assert ignored == ["0000000000000000", "0000000000000000"], status
