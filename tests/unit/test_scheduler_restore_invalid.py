"""A stored function config that today's validation refuses (an older server accepted a NUL in an
env value) must not keep the server from starting: that version is left out, and a function whose
latest version is refused is not served until it is redeployed under its name."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import pytest

from agentcell.errors import NotFound
from tests.unit.test_scheduler import Harness


def spoil(db: Path, version: int) -> None:
    """Write what an older server stored: a config with a NUL in an env value."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (config_json,) = conn.execute(
            "SELECT config_json FROM functions WHERE name = 'echo' AND version = ?", (version,)
        ).fetchone()
        config = json.loads(config_json)
        config["env"] = {"BAD": "a\x00b"}
        conn.execute(
            "UPDATE functions SET config_json = ? WHERE name = 'echo' AND version = ?",
            (json.dumps(config), version),
        )
        conn.commit()


async def restarted(tmp_path: Path) -> Harness:
    harness = Harness(tmp_path)
    await harness.start()
    return harness


async def test_an_older_version_that_no_longer_validates_is_left_out(tmp_path: Path, archive: Path) -> None:
    first = await restarted(tmp_path)
    await first.deploy(archive)
    await first.deploy(archive, env={"GOOD": "1"})
    await first.stop()
    spoil(tmp_path / "meta.db", 1)
    second = await restarted(tmp_path)
    try:
        fn = second.scheduler.function("echo")
        assert fn.latest.version == 2 and set(fn.versions) == {2}
        lease = await second.scheduler.route("echo", None)
        assert lease.instance.version == 2
        second.scheduler.release(lease)
    finally:
        await second.stop()


async def test_a_function_whose_latest_version_no_longer_validates_waits_for_a_redeploy(
    tmp_path: Path, archive: Path
) -> None:
    first = await restarted(tmp_path)
    await first.deploy(archive)
    await first.stop()
    spoil(tmp_path / "meta.db", 1)
    second = await restarted(tmp_path)
    try:
        with pytest.raises(NotFound):
            second.scheduler.function("echo")
        await second.deploy(archive)  # numbered after the stored one: no clash with its record
        assert second.scheduler.function("echo").latest.version == 2
        lease = await second.scheduler.route("echo", None)
        assert lease.instance.version == 2
        second.scheduler.release(lease)
    finally:
        await second.stop()
    third = await restarted(tmp_path)  # the refused version stays left out, the new one is served
    try:
        assert set(third.scheduler.function("echo").versions) == {2}
    finally:
        await third.stop()
