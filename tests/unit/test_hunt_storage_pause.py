"""A pause that fails after its snapshot is stored (the paused sandbox's record cannot be written)
must leave the sandbox as every other failed pause does: running, thawed, writable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agentcell.protocol.sandboxes import SandboxCreate
from tests.unit.test_sandbox_pause import World, world

__all__ = ["world"]


def refuse_paused_records(db: Path) -> None:
    """The meta store's own database refuses the record (as a full or read-only disk would)."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON paused_sandboxes "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    conn.close()


async def test_a_pause_whose_record_cannot_be_written_thaws_the_sandbox(world: World, tmp_path: Path) -> None:
    sandbox = await world.service.create(SandboxCreate())
    refuse_paused_records(tmp_path / "meta.db")
    with pytest.raises(sqlite3.IntegrityError, match="disk is full"):
        await world.pauses.pause(sandbox.id)
    running = world.service.running(sandbox.id)
    assert (running.state, running.pausing, world.driver.frozen) == ("running", False, set())
    assert world.pauses.paused(sandbox.id) is None
    assert world.keeper.user_of(f"default/_sandboxes/{sandbox.id}") is None  # its hold was let go
