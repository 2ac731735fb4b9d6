"""FileChanges: a snapshot holding the gate waits for the changes in flight, and changes arriving
meanwhile (however many) wait for it, then all go ahead; a write is out of the gate between its
two turns."""

from __future__ import annotations

import asyncio

from agentcell.server.scheduler.file_changes import FileChanges, WriteChange


async def _settle() -> None:
    """Let every ready task run until it waits (no wall clock involved)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_a_snapshot_waits_for_changes_in_flight_and_holds_new_ones() -> None:
    gate, order = FileChanges(), []
    await gate.enter()  # a change in flight

    async def snapshot() -> None:
        async with gate.held():
            order.append("snapshot")
            await _settle()  # changes that arrive now must not run meanwhile
            order.append("snapshot done")

    async def change(name: str) -> None:
        async with gate.change():
            order.append(name)

    holding = asyncio.create_task(snapshot())
    await _settle()
    later = [asyncio.create_task(change(f"change {i}")) for i in range(3)]
    await _settle()
    assert order == []  # the snapshot waits for the change in flight; the new ones for the snapshot
    gate.leave()
    await asyncio.gather(holding, *later)
    assert order == ["snapshot", "snapshot done", "change 0", "change 1", "change 2"]


async def test_a_write_between_its_turns_does_not_hold_a_snapshot() -> None:
    gate = FileChanges()
    write = WriteChange(gate)
    await write.enter()  # its start
    write.leave()  # its body streams
    async with gate.held():
        committing = asyncio.create_task(write.enter())
        await _settle()
        assert not committing.done()  # its commit waits for the snapshot
    await committing
    write.leave()
    write.leave()  # not in: nothing to leave (a second leave would unbalance the gate)
    await gate.enter()
    holding = asyncio.create_task(_hold(gate))
    await _settle()
    assert not holding.done()
    gate.leave()
    await holding


async def _hold(gate: FileChanges) -> None:
    async with gate.held():
        pass
