"""The tmpfs of a session on a shared instance is mounted by the server, as root, at
/home/user/sessions/<key> — a path under the sandbox user's home. Code of another session of the
instance can make that path a symlink before the session arrives; the mount must not follow it.
It used to: a user-owned tmpfs over /usr/local, where the code then planted
/usr/local/sbin/umount, which the server ran as host root when the session ended."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import deploy
from tests.integration.test_hunt_storage_mtime import APP, CONFIG

KEY = "x-agentcell-session-id"


@pytest.fixture
def shared_fn(api: httpx.Client, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "app.py").write_text(APP)
    name = "hunt-" + uuid.uuid4().hex[:8]
    reply = deploy(api, name, {**CONFIG, "sessions_per_instance": 4}, tmp_path / "code")
    assert reply.status_code == 200, reply.text
    yield name
    api.delete(f"/v1/functions/{name}")


def sh(api: httpx.Client, fn: str, key: str, cmd: str) -> httpx.Response:
    return api.get(f"/fn/{fn}/", params={"cmd": cmd}, headers={KEY: key})


def test_a_symlink_where_a_session_mounts_is_never_followed(api: httpx.Client, shared_fn: str) -> None:
    first = api.post(f"/v1/functions/{shared_fn}/sessions", json={"key": "first"}).json()
    planted = sh(api, shared_fn, "first", "ln -s /usr/local /home/user/sessions/second && echo planted")
    assert planted.text == "planted\n", planted.text
    second = api.post(f"/v1/functions/{shared_fn}/sessions", json={"key": "second"})
    mounts = sh(api, shared_fn, "first", "grep -c ' /usr/local ' /proc/mounts; touch /usr/local/x").text
    assert mounts.startswith("0\n") and "Permission denied" in mounts, mounts
    if second.status_code == 201:
        api.delete(f"/v1/sessions/{second.json()['id']}")
    api.delete(f"/v1/sessions/{first['id']}")


def test_a_session_s_tmpfs_is_mounted_and_goes_when_it_ends(api: httpx.Client, shared_fn: str) -> None:
    """Mounting and unmounting by fd still do their job for sessions that play fair."""
    stays = api.post(f"/v1/functions/{shared_fn}/sessions", json={"key": "stays"}).json()
    goes = api.post(f"/v1/functions/{shared_fn}/sessions", json={"key": "goes"}).json()
    count = "grep -c ' /home/user/sessions/goes tmpfs' /proc/mounts || true"
    assert sh(api, shared_fn, "stays", count).text == "1\n"
    assert sh(api, shared_fn, "goes", "df --output=size -k /home/user/sessions/goes | tail -1").text.strip()
    assert api.delete(f"/v1/sessions/{goes['id']}").status_code == 204
    assert sh(api, shared_fn, "stays", count).text == "0\n"
    api.delete(f"/v1/sessions/{stays['id']}")
