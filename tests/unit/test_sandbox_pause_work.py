"""Work started while a sandbox is being paused, on the FakeDriver with an interpreter: a code run
is refused as a command is (409, "being paused"), not run into a sandbox whose files are being
saved (frozen, then stopped: its effects would be missing from the snapshot)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentcell.errors import NotRunning
from agentcell.protocol.code import CodeRun
from agentcell.protocol.commands import CommandRequest
from agentcell.protocol.sandboxes import SandboxCreate
from tests.unit.test_sandbox_pause import World, built_world, store_switch


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """test_sandbox_pause.py's world, its sandbox service given a code interpreter."""
    async with built_world(tmp_path, code=True) as built:
        yield built


@contextlib.asynccontextmanager
async def pause_held_while_saving(world: World, sandbox_id: str) -> AsyncIterator[asyncio.Task[Any]]:
    """A pause of the sandbox, held in the middle of saving its files until the block ends."""
    saving, release = asyncio.Event(), asyncio.Event()
    persist = world.snapshots.persist

    async def held(*args: Any, **kwargs: Any) -> Any:
        saving.set()
        await release.wait()
        return await persist(*args, **kwargs)

    world.snapshots.persist = held  # type: ignore[method-assign]
    pausing = asyncio.create_task(world.pauses.pause(sandbox_id))
    await saving.wait()
    try:
        yield pausing
    finally:
        release.set()
        with contextlib.suppress(Exception):
            await pausing


async def test_a_code_run_during_a_pause_is_refused_as_a_command_is(world: World) -> None:
    """`code()` checked only that the sandbox ran, so a run could start in the middle of a pause:
    into a frozen sandbox about to stop (with the linux driver: a kernel that never answers, then
    an error that is not about the pause)."""
    sandbox = await world.service.create(SandboxCreate())
    async with pause_held_while_saving(world, sandbox.id) as pausing:
        with pytest.raises(NotRunning, match="being paused"):
            await world.service.start_process(sandbox.id, CommandRequest(cmd="true"))
        with pytest.raises(NotRunning, match="being paused"):
            await world.service.code(sandbox.id).for_run(CodeRun(code="1 + 1"))
        assert not pausing.done()
    assert world.pauses.paused(sandbox.id) is not None


async def test_code_is_taken_again_once_a_pause_that_failed_thawed_the_sandbox(world: World) -> None:
    sandbox = await world.service.create(SandboxCreate())
    switch = store_switch(world)
    async with pause_held_while_saving(world, sandbox.id) as pausing:
        switch.down = True  # the snapshot's upload fails: the sandbox keeps running
    assert pausing.exception() is not None
    context = await world.service.code(sandbox.id).for_run(CodeRun(code="1 + 1"))
    assert context.spec.is_default
