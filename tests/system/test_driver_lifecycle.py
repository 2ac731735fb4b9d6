"""Start, stop and restart: nothing of a sandbox outlives `stop`, a failed start or a server restart."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from agentcell.errors import Conflict, Internal, Unavailable
from agentcell.server.sandbox.driver import ExecSpec, SandboxSpec
from agentcell.server.sandbox.linux.driver import LinuxDriver
from tests.system.conftest import CGROUP_ROOT, is_running, make_driver, node_leftovers, run, through_workers

pytestmark = pytest.mark.system


def pidns_members(pidns_inode: int) -> list[int]:
    """Host pids of every process in the pid namespace with that inode."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/pid").st_ino == pidns_inode:
                    members.append(int(entry))
            except OSError:
                continue
    return members


def sandbox_traces(driver: LinuxDriver, sandbox_id: str) -> list[str]:
    traces = [str(p) for p in CGROUP_ROOT.glob(f"*/agentcell-{driver.node_id}/{sandbox_id}")]
    state_file = driver.state_dir / "instances" / f"{sandbox_id}.json"
    return traces + ([str(state_file)] if state_file.exists() else [])


async def test_nothing_outlives_stop(linux_driver: LinuxDriver) -> None:
    """Background jobs, a daemon in its own session and a fork bomb are all gone after stop."""
    await linux_driver.start(SandboxSpec(sandbox_id="doomed", pids_max=64))
    init_pid = linux_driver.init_pid("doomed")
    pidns = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    daemon = await run(
        linux_driver, "doomed", ["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 < /dev/null &"]
    )
    assert daemon.code == 0
    stubborn = await linux_driver.exec("doomed", ExecSpec(argv=["sh", "-c", "trap '' TERM; sleep 1000"]))
    bomb = await linux_driver.exec("doomed", ExecSpec(argv=["bash", "-c", ":(){ :|:& };:"]))
    await asyncio.sleep(0.5)
    assert len(pidns_members(pidns)) > 3

    started = time.monotonic()
    await linux_driver.stop("doomed", grace_s=0.5)
    assert time.monotonic() - started < 5

    assert pidns_members(pidns) == []
    assert not is_running(init_pid)
    assert sandbox_traces(linux_driver, "doomed") == []
    assert (await asyncio.wait_for(stubborn.wait(), 5)).code == 137
    await asyncio.wait_for(bomb.wait(), 5)  # its shell returned at once; the bomb ran on below it
    await linux_driver.stop("doomed")  # idempotent


async def test_stop_lets_processes_exit_on_sigterm(linux_driver: LinuxDriver, sandbox: str) -> None:
    handler = "import signal, time; signal.signal(15, lambda *a: exit(7)); print('ready', flush=True)"
    process = await linux_driver.exec(
        sandbox, ExecSpec(argv=["python3", "-c", handler + "; time.sleep(100)"])
    )
    # python has its handler once it says so (however slowly a loaded machine starts it)
    assert await asyncio.wait_for(process.stdout.readline(), 30) == b"ready\n"
    await linux_driver.stop(sandbox, grace_s=5)
    assert (await process.wait()).code == 7


async def test_a_frozen_sandbox_stops_without_grace(linux_driver: LinuxDriver, sandbox: str) -> None:
    """Frozen for a snapshot that was taken, it must not run past it: no SIGTERM grace (a process
    ignoring SIGTERM kept it alive for the whole grace before), it dies as it thaws."""
    stubborn = await linux_driver.exec(sandbox, ExecSpec(argv=["sh", "-c", "trap '' TERM; sleep 1000"]))
    await asyncio.sleep(0.2)
    assert await linux_driver.freeze(sandbox)
    started = time.monotonic()
    await linux_driver.stop(sandbox, grace_s=5)
    assert time.monotonic() - started < 2
    assert (await asyncio.wait_for(stubborn.wait(), 5)).code == 137
    assert sandbox_traces(linux_driver, sandbox) == []


async def test_idle_stop_is_quick(linux_driver: LinuxDriver, sandbox: str) -> None:
    started = time.monotonic()
    await linux_driver.stop(sandbox, grace_s=5)
    assert time.monotonic() - started < 0.5
    assert sandbox_traces(linux_driver, sandbox) == []


async def test_failed_start_leaves_nothing(linux_driver: LinuxDriver, sandbox: str) -> None:
    """A start whose root filesystem cannot be built fails cleanly: no cgroup, process or file."""
    shutil.rmtree(linux_driver.state_dir / "etc-skel")  # the helper's /etc overlay will fail
    with pytest.raises((Unavailable, Internal), match="could not start"):
        await linux_driver.start(SandboxSpec(sandbox_id="broken"))
    assert sandbox_traces(linux_driver, "broken") == []
    assert (await run(linux_driver, sandbox, ["true"])).code == 0  # running sandboxes are unaffected


async def test_reap_orphans_after_a_restart(linux_driver: LinuxDriver, prebuilt_helper: Path) -> None:
    """A second driver on the same state dir (a restarted server) stops what the first left."""
    inits = {}
    for sandbox_id in ("left-1", "left-2"):
        await linux_driver.start(SandboxSpec(sandbox_id=sandbox_id))
        await run(linux_driver, sandbox_id, ["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 < /dev/null &"])
        inits[sandbox_id] = linux_driver.init_pid(sandbox_id)
    pidns = {i: os.stat(f"/proc/{pid}/ns/pid").st_ino for i, pid in inits.items()}

    restarted = make_driver(linux_driver.state_dir, prebuilt_helper)
    try:
        assert restarted.node_id == linux_driver.node_id
        assert await restarted.reap_orphans() == ["left-1", "left-2"]
        for sandbox_id, pid in inits.items():
            assert not is_running(pid)
            assert pidns_members(pidns[sandbox_id]) == []
            assert sandbox_traces(restarted, sandbox_id) == []
        assert await restarted.reap_orphans() == []
    finally:
        await restarted.aclose()
    assert node_leftovers(restarted) == []


async def test_aclose_stops_everything(linux_driver: LinuxDriver) -> None:
    for i in range(3):
        await linux_driver.start(SandboxSpec(sandbox_id=f"many-{i}"))
    await linux_driver.aclose()
    assert node_leftovers(linux_driver) == []


async def test_adopt_after_a_restart(linux_driver: LinuxDriver, prebuilt_helper: Path) -> None:
    """A restarted server takes over the instances it still wants and reaps the rest."""
    await linux_driver.start(SandboxSpec(sandbox_id="keep", env={"FROM": "spec"}))
    await linux_driver.start(SandboxSpec(sandbox_id="drop"))
    await run(linux_driver, "keep", ["sh", "-c", "echo kept > ~/state"])

    restarted = make_driver(linux_driver.state_dir, prebuilt_helper)
    try:
        assert await restarted.adopt("keep") is True
        assert await restarted.adopt("keep") is True
        assert await restarted.adopt("never-was") is False
        assert await restarted.reap_orphans() == ["drop"]
        result = await run(restarted, "keep", ["sh", "-c", 'cat ~/state; echo "$FROM $HOSTNAME"'])
        assert result.stdout == "kept\nspec keep\n"
        await restarted.stop("keep")
        assert sandbox_traces(restarted, "keep") == []
    finally:
        await restarted.aclose()


async def test_stop_reaps_a_command_whose_helper_was_killed(linux_driver: LinuxDriver, sandbox: str) -> None:
    """A command whose helper is SIGKILLed from outside dies too (parent-death signal) and is
    re-parented to us; nobody waits for it. A dying init waits until its namespace is reaped, so
    stop must reap such a zombie itself rather than wait out its timeouts (it took 11 s)."""
    through_workers(linux_driver, sandbox)
    process = await linux_driver.exec(sandbox, ExecSpec(argv=["sleep", "300"]))
    os.kill(process.helper_pid, 9)
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await linux_driver.stop(sandbox, grace_s=0.2)
    assert time.monotonic() - started < 1.5
    assert sandbox_traces(linux_driver, sandbox) == []
    del process


async def test_a_start_of_an_id_an_untracked_instance_holds_is_a_conflict(
    linux_driver: LinuxDriver, prebuilt_helper: Path
) -> None:
    """A restarted server that has not adopted or reaped an instance yet knows it only by its
    cgroups: starting its id again is refused (the spawn worker's cgroup conflict), and the
    instance keeps running with its files, state record and cgroups."""
    await linux_driver.start(SandboxSpec(sandbox_id="held"))
    await run(linux_driver, "held", ["sh", "-c", "echo mine > ~/state"])
    init = linux_driver.init_pid("held")
    restarted = make_driver(linux_driver.state_dir, prebuilt_helper)
    try:
        with pytest.raises(Conflict):
            await restarted.start(SandboxSpec(sandbox_id="held"))
        twice = await asyncio.gather(
            *(restarted.start(SandboxSpec(sandbox_id="twice")) for _ in range(2)), return_exceptions=True
        )
        assert sorted(type(outcome).__name__ for outcome in twice) == ["Conflict", "NoneType"]
        assert is_running(init)
        assert (linux_driver.state_dir / "instances" / "held.json").exists()
        assert await restarted.adopt("held") is True
        assert (await run(restarted, "held", ["cat", "/home/user/state"])).stdout == "mine\n"
    finally:
        await restarted.aclose()
    assert node_leftovers(restarted) == []
