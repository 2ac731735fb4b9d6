"""Fixtures for system tests: a real LinuxDriver (namespaces, cgroups, seccomp) on this host.

Every driver gets its own state dir (hence its own node id and cgroup root), is closed after the
test, and the test fails if anything of that node is left: a cgroup directory or an instance
state file. Driver tests run on both event loops: asyncio's and uvloop, which the server uses.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import uvloop

from agentcell.server.egress.node import EgressConfig
from agentcell.server.sandbox.driver import ExecSpec, ExitStatus, SandboxSpec
from agentcell.server.sandbox.linux.build import helper_path
from agentcell.server.sandbox.linux.driver import LinuxDriver, become_subreaper

CGROUP_ROOT = Path("/sys/fs/cgroup")
MiB = 1 << 20


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name.startswith("test_driver_"):
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


def _missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces, cgroups, mounts)"
    if shutil.which("gcc") is None:
        return "needs gcc to build acell-helper"
    return None


@pytest.fixture(scope="session")
def prebuilt_helper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compile acell-helper once per session; each driver gets a copy where it would build it."""
    reason = _missing_requirement()
    if reason:  # fail, not skip: a CI without root must not go green without the isolation battery
        pytest.fail(f"system tests cannot run here: {reason}")
    become_subreaper()  # as the server does: orphaned inits come back to us to be reaped
    return helper_path(tmp_path_factory.mktemp("helper"))


def node_leftovers(driver: LinuxDriver) -> list[str]:
    """Everything of the driver's node still on the host (should be empty after aclose)."""
    leftovers = [str(p) for p in CGROUP_ROOT.glob(f"*/agentcell-{driver.node_id}")]
    leftovers += [str(p) for p in CGROUP_ROOT.glob(f"agentcell-{driver.node_id}")]
    leftovers += [str(p) for p in (driver.state_dir / "instances").glob("*")]
    return leftovers


def make_driver(state_dir: Path, helper: Path, egress: EgressConfig | None = None) -> LinuxDriver:
    (state_dir / "bin").mkdir(parents=True, exist_ok=True)
    if not (state_dir / "bin" / helper.name).exists():
        shutil.copy2(helper, state_dir / "bin" / helper.name)
    return LinuxDriver(state_dir, close_grace_s=0.5, egress=egress)


def is_running(host_pid: int) -> bool:
    """True while the host pid is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{host_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture
async def linux_driver(tmp_path: Path, prebuilt_helper: Path) -> AsyncIterator[LinuxDriver]:
    driver = make_driver(tmp_path / "state", prebuilt_helper)
    try:
        yield driver
    finally:
        await driver.aclose()
        assert node_leftovers(driver) == [], "the driver left part of its node behind"


@dataclass(frozen=True, slots=True)
class Result:
    stdout: str
    stderr: str
    status: ExitStatus

    @property
    def code(self) -> int:
        return self.status.code


async def run(
    driver: LinuxDriver,
    sandbox_id: str,
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout_s: float = 30,
) -> Result:
    """Run a command to completion and collect its output."""
    spec = ExecSpec(argv=list(argv), env=dict(env or {}))
    spec = replace(spec, cwd=cwd) if cwd else spec
    process = await driver.exec(sandbox_id, spec)
    if stdin is not None:
        await process.write_stdin(stdin)
    await process.close_stdin()
    out, err, status = await asyncio.wait_for(
        asyncio.gather(process.stdout.read(), process.stderr.read(), process.wait()), timeout_s
    )
    return Result(out.decode(errors="replace"), err.decode(errors="replace"), status)


@pytest.fixture
async def sandbox(linux_driver: LinuxDriver) -> str:
    """One running sandbox with the default limits; its id."""
    await linux_driver.start(SandboxSpec(sandbox_id="sbx-1"))
    return "sbx-1"


def through_workers(driver: LinuxDriver, sandbox_id: str) -> None:
    """Start the instance's commands through exec workers from now on, as an adopted instance's
    are (the init of one this driver spawned starts them)."""
    instance = driver._instances[sandbox_id]
    assert instance.target.channel is not None
    instance.target.channel.close()
    instance.target = replace(instance.target, channel=None)


@pytest.fixture
def host_sleeper() -> Iterator[int]:
    """A host process (not in any sandbox) that sandboxes must not be able to touch."""
    import subprocess

    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc.pid
        assert proc.poll() is None, "the host process was killed from inside a sandbox"
    finally:
        proc.kill()
        proc.wait()
