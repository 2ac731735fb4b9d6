"""A deploy whose code does not fit on the node's disk (a small gzip unpacking to more than the
state filesystem holds) on a real server whose state dir is a 96 MiB tmpfs: the deploy gets the
error envelope (503, not a 500) saying so, its partial code is removed at once, and the next
deploy that fits works."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH, ServerProcess

MiB = 1 << 20
APP = (Path(__file__).resolve().parent.parent / "fixtures" / "echo_fn" / "app.py").read_bytes()


@pytest.fixture
def small_state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(state)], check=True)
    try:
        yield state
    finally:
        subprocess.run(["umount", str(state)], check=True)


def code(zero_megabytes: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in (("app.py", APP), ("zeros", b"\0" * (zero_megabytes * MiB))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), compresslevel=1)


def used(path: Path) -> int:
    stats = os.statvfs(path)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def test_code_larger_than_the_disk_is_refused_and_leaves_no_partial_copy(small_state_dir: Path) -> None:
    server = ServerProcess(small_state_dir)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
            before = used(small_state_dir)
            files: dict[str, tuple[str | None, str | bytes]] = {
                "config": (None, json.dumps({"cmd": "python3 app.py"})),
                "code": ("c.tgz", code(200)),
            }
            reply = api.put("/v1/functions/bomb", files=files)
            assert reply.status_code == 503, reply.text
            assert reply.json()["code"] == "unavailable"
            assert "disk" in reply.json()["message"]
            assert used(small_state_dir) - before < 4 * MiB
            assert not (small_state_dir / "functions" / "bomb").exists()
            files["code"] = ("c.tgz", code(1))
            assert api.put("/v1/functions/bomb", files=files).status_code == 200
            assert api.delete("/v1/functions/bomb").status_code == 204
    finally:
        assert server.stop() == 0, server.log()
