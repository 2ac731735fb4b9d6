"""Work started while a sandbox is being paused, on the FakeDriver with an interpreter: a code run
is refused as a command is (409, "being paused"), not run into a sandbox whose files are being
saved (frozen, then stopped: its effects would be missing from the snapshot); a change through the
files API is refused as a write is, and one under way when the pause begins is in the paused copy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentcell.errors import NotRunning
from agentcell.protocol.code import CodeRun
from agentcell.protocol.commands import CommandRequest
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.server.sandbox.driver import FileStat
from agentcell.server.sandbox.linux.files import RootedFiles
from agentcell.server.scheduler.sandboxes import LiveFiles
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


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _home(world: World, sandbox_id: str) -> dict[str, bytes | None]:
    """What /home/user holds: each file's bytes, None for a directory."""
    files = world.service.files(sandbox_id)
    listed = await files.list("/home/user")
    return {
        e.name: b"".join([c async for c in files.read(e.path)]) if e.type == "file" else None for e in listed
    }


async def test_a_file_change_begun_during_a_pause_fails_and_the_paused_copy_is_as_before(
    world: World,
) -> None:
    """A rename, mkdir or remove through the files API while a pause saves is refused as a write
    is (409, "was paused"): a rename between the save's walk of the files and its reading of them
    left the file under neither name in the paused copy."""
    sandbox = await world.service.create(SandboxCreate())
    files = world.service.files(sandbox.id)
    for name in ("a.txt", "b.txt"):
        await files.write(f"/home/user/{name}", _one(name.encode()))
    async with pause_held_while_saving(world, sandbox.id) as pausing:
        refused = f"sandbox {sandbox.id} was paused, so"
        with pytest.raises(NotRunning, match=f"{refused} /home/user/b.txt was not renamed; rename it again"):
            await files.rename("/home/user/b.txt", "/home/user/c.txt")
        with pytest.raises(
            NotRunning, match=f"{refused} directory /home/user/new was not made; make it again"
        ):
            await files.make_dir("/home/user/new")
        with pytest.raises(NotRunning, match=f"{refused} /home/user/a.txt was not removed; remove it again"):
            await files.remove("/home/user/a.txt")
        with pytest.raises(NotRunning, match="was paused while the file was written, so it was not kept"):
            await files.write("/home/user/d.txt", _one(b"late"))
        assert not pausing.done()
    await world.pauses.resume(sandbox.id)
    assert await _home(world, sandbox.id) == {"a.txt": b"a.txt", "b.txt": b"b.txt"}


class ParkedFiles(RootedFiles):
    """A sandbox's real files whose renames, and writes' commits, wait for `go` once under way
    (`parked` set when both are)."""

    def __init__(self, root_path: str) -> None:
        super().__init__(root_path, uid=None, gid=None)
        self.under_way, self.go = 0, asyncio.Event()
        self.parked = asyncio.Event()

    async def rename(self, src: str, dst: str) -> FileStat:
        await self._park()
        return await super().rename(src, dst)

    async def write(self, path: str, chunks: AsyncIterable[bytes]) -> FileStat:
        async def then_park() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                yield chunk
            await self._park()  # the body is all given: the commit's turn was taken, the commit is next

        return await super().write(path, then_park())

    async def _park(self) -> None:
        self.under_way += 1
        if self.under_way == 2:
            self.parked.set()
        await self.go.wait()


async def test_file_changes_in_flight_when_a_pause_begins_are_in_the_paused_copy(
    world: World, tmp_path: Path
) -> None:
    """A rename and a write's commit under way when a pause begins finish before its save walks
    the files: both are answered as done, and the paused copy has them (the pause went on without
    them: it saved the file under its old name and stopped the instance under the rename)."""
    sandbox = await world.service.create(SandboxCreate())
    await world.service.files(sandbox.id).write("/home/user/b.txt", _one(b"b"))
    parked = ParkedFiles(str(tmp_path / "sandboxes" / sandbox.id))  # where built_world's FakeDriver keeps it
    files = LiveFiles(parked, world.service.running(sandbox.id))
    renaming = asyncio.create_task(files.rename("/home/user/b.txt", "/home/user/c.txt"))
    writing = asyncio.create_task(files.write("/home/user/w.txt", _one(b"written")))
    await parked.parked.wait()
    pausing = asyncio.create_task(world.pauses.pause(sandbox.id))
    for _ in range(50):  # a pause that does not wait for them is done by then (no bound on one that does)
        if pausing.done():
            break
        await asyncio.sleep(0.01)
    assert not pausing.done()
    parked.go.set()
    assert (await renaming).name == "c.txt" and (await writing).size == len(b"written")
    await pausing
    await world.pauses.resume(sandbox.id)
    assert await _home(world, sandbox.id) == {"c.txt": b"b", "w.txt": b"written"}
