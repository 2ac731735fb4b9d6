"""Input queued for a process that never reads it goes when the process goes: freed by reference
counting as soon as the process is closed, not held until the cycle collector runs (which, in a
server with a large heap, may be never: 20 such writes of 16 MiB kept 330 MB each round)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from agentcell.errors import NotRunning
from agentcell.server.sandbox.driver import ExecSpec
from agentcell.server.sandbox.linux.driver import LinuxDriver
from agentcell.server.scheduler.processes import ManagedProcess, ProcessTable

pytestmark = pytest.mark.system
MiB = 1 << 20


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def test_input_queued_for_a_killed_process_is_freed_with_it(
    linux_driver: LinuxDriver, sandbox: str, no_cycle_collector: None
) -> None:
    table = ProcessTable()
    started = await linux_driver.exec(sandbox, ExecSpec(argv=["sleep", "600"]))
    process = ManagedProcess(started, [], "/", None)
    table.add(process)
    process.start()
    await process.write_stdin(b"x" * (4 * MiB), close=False)  # more than the pipe holds: queued
    gone: list[weakref.ref[object]] = [weakref.ref(process), weakref.ref(started)]
    await linux_driver.stop(sandbox, 0.5)  # as deleting a sandbox does: the pipe breaks
    await table.aclose()
    await asyncio.sleep(0.1)  # the queued write has failed by now
    del process, started
    alive = [type(ref()).__name__ for ref in gone if ref() is not None]
    assert alive == [], f"only the cycle collector would free {alive} (and the input queued for it)"


async def test_a_write_to_a_process_that_exited_leaves_no_cycle(
    linux_driver: LinuxDriver, sandbox: str, no_cycle_collector: None
) -> None:
    """The write is refused (the pipe is broken) and nothing of it stays behind."""
    started = await linux_driver.exec(sandbox, ExecSpec(argv=["true"]))
    process = ManagedProcess(started, [], "/", None)
    process.start()
    await process.wait()
    with pytest.raises(NotRunning):
        await process.write_stdin(b"x" * MiB, close=False)
    gone: list[weakref.ref[object]] = [weakref.ref(process), weakref.ref(started)]
    await process.aclose()
    del process, started
    alive = [type(ref()).__name__ for ref in gone if ref() is not None]
    assert alive == [], f"only the cycle collector would free {alive}"
