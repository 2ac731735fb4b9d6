"""A server SIGKILLed while gcc built its sandbox helper left the half-written binary in
`<state dir>/bin` for good (~700 KB a crash): the next start built another beside it and never
looked back. Whoever asks for the helper now removes those of builders that are gone, and
leaves alone the one a live builder is still writing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

from agentcell.server.sandbox.linux.build import helper_path, helper_source


def built_helper(state_dir: Path) -> Path:
    """The helper as already built (so that helper_path needs no compiler here)."""
    target = state_dir / "bin" / f"acell-helper-{hashlib.sha256(helper_source()).hexdigest()[:12]}"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"\x7fELF")
    return target


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_half_built_helpers_of_dead_builders_are_removed(tmp_path: Path) -> None:
    target = built_helper(tmp_path)
    killed_old = target.with_name(f".{target.name}.{uuid.uuid4().hex}")  # what the crash left
    killed = target.with_name(f".{target.name}.{dead_pid()}.{uuid.uuid4().hex}")
    building = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex}")
    for path in (killed_old, killed, building):
        path.write_bytes(b"half a binary")

    assert helper_path(tmp_path) == target
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, building.name])
