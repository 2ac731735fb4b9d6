"""Session workspaces on the real server and Linux driver: files survive idle stops and come back
on a fresh instance, snapshots on demand, quotas, isolation between sessions, damaged snapshots,
and a server killed in the middle of a persist."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from agentcell.cli.main import cli
from tests.conftest import AUTH, ServerFactory
from tests.integration.conftest import deploy

KEY = "x-agentcell-session-id"
HOME = "/home/user"
PERSIST: dict[str, Any] = {"persist": True, "sync_interval_s": 0}
BASE: dict[str, Any] = {"cmd": "python3 app.py", "idle_timeout_s": 600, "workspace": PERSIST}

MakeFn = Callable[[dict[str, Any]], str]


def make_fn_on(api: httpx.Client, names: list[str]) -> MakeFn:
    def make(config: dict[str, Any]) -> str:
        name = "ws-" + uuid.uuid4().hex[:8]
        reply = deploy(api, name, {**BASE, **config})
        assert reply.status_code == 200, reply.text
        names.append(name)
        return name

    return make


@pytest.fixture
def make_fn(api: httpx.Client) -> Iterator[MakeFn]:
    names: list[str] = []
    yield make_fn_on(api, names)
    for name in names:
        api.delete(f"/v1/functions/{name}")


def call(api: httpx.Client, fn: str, route: str, key: str, **params: Any) -> httpx.Response:
    return api.get(f"/fn/{fn}{route}", params=params, headers={KEY: key})


def ok(reply: httpx.Response) -> Any:
    assert reply.status_code in (200, 201), reply.text
    return reply.json()


def live_session(api: httpx.Client, fn: str, key: str) -> dict[str, Any]:
    sessions = ok(api.get(f"/v1/functions/{fn}/sessions"))["sessions"]
    return next((s for s in sessions if s["key"] == key), {})


def wait_for(condition: Callable[[], Any], timeout_s: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.05)
    return value


def without_excluded(tree: dict[str, Any]) -> dict[str, Any]:
    return {path: entry for path, entry in tree.items() if not path.startswith("node_modules")}


def storage_path(fn: str, key: str) -> str:
    return f"default/{fn}/{key.replace('/', '~')}"


def test_files_and_modes_survive_30_idle_stops(api: httpx.Client, make_fn: MakeFn) -> None:
    """The bug class of E2B #884: write → idle stop → resume on a fresh instance → every byte and
    mode is back (node_modules, excluded, is not), 30 times over."""
    fn = make_fn({"idle_timeout_s": 1, "min_warm": 1})
    key = "alice/chat-42"
    instances: set[str] = set()
    expected: dict[str, Any] = {}
    for cycle in range(30):
        restored = ok(call(api, fn, "/tree", key, dir=f"{HOME}/proj"))
        assert restored == expected, f"cycle {cycle}: the workspace came back different"
        instances.add(ok(call(api, fn, "/whoami", key))["instance"])
        ok(call(api, fn, "/populate", key, dir=f"{HOME}/proj", seed=cycle, files=4 + cycle % 5, kb=8))
        written = ok(call(api, fn, "/tree", key, dir=f"{HOME}/proj"))
        assert "node_modules/pkg/index.js" in written
        expected = without_excluded(written)
        wait_for(lambda: not live_session(api, fn, key), what=f"cycle {cycle}: idle stop")
    assert len(instances) == 30, "every cycle must resume on a fresh instance"
    stored = f"/v1/workspaces/{storage_path(fn, key)}"
    # (the session leaves the live list when it ends; its last snapshot is written after that)
    wait_for(lambda: ok(api.get(stored))["session_id"] is None, what="the last snapshot")
    workspace = ok(api.get(stored))
    assert workspace["last_snapshot"]["seq"] >= 30
    assert workspace["function"] == fn and workspace["key"] == key


def test_snapshot_on_demand_is_incremental_and_listed(api: httpx.Client, make_fn: MakeFn) -> None:
    fn = make_fn({})
    session = ok(api.post(f"/v1/functions/{fn}/sessions", json={"key": "inc"}))
    assert session["workspace"] == {
        "path": HOME,
        "storage_path": storage_path(fn, "inc"),
        "quota_bytes": 1024 << 20,
    }
    ok(call(api, fn, "/populate", "inc", dir=f"{HOME}/proj", seed="a", files=20, kb=32))
    first = api.post(f"/v1/sessions/{session['id']}/snapshot").json()
    assert first["seq"] == 1 and first["uploaded_bytes"] >= 20 * 32 * 1024 // 2
    ok(call(api, fn, "/write", "inc", path=f"{HOME}/proj/top0.txt", text="changed"))
    second = api.post(f"/v1/sessions/{session['id']}/snapshot").json()
    assert second["seq"] == 2
    assert second["uploaded_bytes"] <= first["uploaded_bytes"] // 10, (first, second)
    listing = ok(api.get("/v1/workspaces"))
    mine = [w for w in listing["workspaces"] if w["storage_path"] == storage_path(fn, "inc")]
    assert mine and mine[0]["session_id"] == session["id"] and mine[0]["stored_bytes"] > 0
    assert mine[0]["sandbox_id"] is None
    assert listing["tenant"] == "default" and listing["stored_bytes"] >= mine[0]["stored_bytes"]
    deleted = api.delete(f"/v1/workspaces/{storage_path(fn, 'inc')}")
    assert deleted.status_code == 409 and "in use" in deleted.json()["message"]


def test_a_paused_sandboxs_workspace_names_the_sandbox(api: httpx.Client) -> None:
    """A paused sandbox's stored files list with its `sandbox_id` (and, for older clients, the
    same id as `session_id`); deleting them is refused with what to do, and they go with it."""
    sandbox_id = ok(api.post("/v1/sandboxes", json={"timeout_s": 60}))["id"]
    path = f"default/_sandboxes/{sandbox_id}"
    try:
        ok(api.post(f"/v1/sandboxes/{sandbox_id}/pause"))
        listed = [w for w in ok(api.get("/v1/workspaces"))["workspaces"] if w["storage_path"] == path]
        assert [(w["sandbox_id"], w["session_id"]) for w in listed] == [(sandbox_id, sandbox_id)]
        assert ok(api.get(f"/v1/workspaces/{path}"))["sandbox_id"] == sandbox_id
        refused = api.delete(f"/v1/workspaces/{path}")
        assert refused.status_code == 409, refused.text
        assert f"paused sandbox {sandbox_id}; resume it or kill it" in refused.json()["message"]
    finally:
        assert api.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    assert api.get(f"/v1/workspaces/{path}").status_code == 404


def test_a_snapshots_files_name_the_snapshot_and_count_as_stored(api: httpx.Client, server_url: str) -> None:
    """A sandbox snapshot's stored files list with its `snapshot_id` (and, as a paused sandbox's,
    the same id as `session_id` for older clients); they are the tenant's stored bytes, which its
    storage quota counts; deleting them here is refused, pointing at DELETE /v1/snapshots, and
    they go with the snapshot."""
    tenant = "wsnap-" + uuid.uuid4().hex[:8]
    ok(api.post("/v1/tenants", json={"name": tenant}))
    key = ok(api.post(f"/v1/tenants/{tenant}/keys", json={"scopes": ["*"]}))["key"]
    try:
        with httpx.Client(base_url=server_url, timeout=60, headers={"x-api-key": key}) as mine:
            _snapshot_listed_and_held(mine, api, tenant, server_url, key)
    finally:
        api.delete(f"/v1/tenants/{tenant}")


def _snapshot_listed_and_held(
    mine: httpx.Client, admin: httpx.Client, tenant: str, url: str, key: str
) -> None:
    sandbox_id = ok(mine.post("/v1/sandboxes", json={"timeout_s": 60}))["id"]
    try:
        ok(
            mine.put(
                f"/v1/sandboxes/{sandbox_id}/files", params={"path": "kept.bin"}, content=os.urandom(2 << 20)
            )
        )
        snapshot_id = ok(mine.post(f"/v1/sandboxes/{sandbox_id}/snapshots"))["id"]
        listing = ok(mine.get("/v1/workspaces"))
        [row] = listing["workspaces"]
        assert row["storage_path"].startswith(f"{tenant}/_snapshots/{snapshot_id}-")
        assert (row["snapshot_id"], row["session_id"], row["sandbox_id"]) == (snapshot_id, snapshot_id, None)
        assert listing["stored_bytes"] == row["stored_bytes"] >= 2 << 20
        ok(admin.patch(f"/v1/tenants/{tenant}", json={"quotas": {"max_storage_mb": 1}}))
        over = mine.post(f"/v1/sandboxes/{sandbox_id}/snapshots")
        assert over.status_code == 429 and f"stores {row['stored_bytes']} bytes" in over.json()["message"]
        table = CliRunner().invoke(cli, ["--url", url, "--api-key", key, "workspace", "ls"])
        assert table.exit_code == 0 and f"snapshot {snapshot_id}" in table.stdout, table.output
    finally:
        assert mine.delete(f"/v1/sandboxes/{sandbox_id}").status_code == 204
    path = row["storage_path"]
    assert ok(mine.get(f"/v1/workspaces/{path}"))["snapshot_id"] == snapshot_id
    refused = mine.delete(f"/v1/workspaces/{path}")
    assert refused.status_code == 409, refused.text
    assert f"delete the snapshot instead (DELETE /v1/snapshots/{snapshot_id})" in refused.json()["message"]
    assert ok(mine.get(f"/v1/snapshots/{snapshot_id}"))["id"] == snapshot_id
    assert mine.delete(f"/v1/snapshots/{snapshot_id}").status_code == 204
    assert mine.get(f"/v1/workspaces/{path}").status_code == 404
    assert ok(mine.get("/v1/workspaces"))["stored_bytes"] == 0


def test_restore_hook_runs_after_the_files_are_back(api: httpx.Client, make_fn: MakeFn) -> None:
    hook = {"cmd": 'ls "$AGENTCELL_WORKSPACE/proj" > "$AGENTCELL_WORKSPACE/restored.txt"', "timeout_s": 10}
    fn = make_fn({"workspace": {**PERSIST, "restore": hook}})
    ok(call(api, fn, "/populate", "hooked", dir=f"{HOME}/proj", seed=1, files=3, kb=1))
    assert api.delete(f"/v1/sessions/{live_session(api, fn, 'hooked')['id']}").status_code == 204
    listed = ok(call(api, fn, "/file", "hooked", path=f"{HOME}/restored.txt"))["text"].split()
    assert "top0.txt" in listed  # the hook saw the restored files
    assert "node_modules" not in listed  # excluded: what a hook like `npm ci` is for


def test_a_failing_restore_hook_ends_the_session_with_a_reason(api: httpx.Client, make_fn: MakeFn) -> None:
    fn = make_fn({"workspace": {**PERSIST, "restore": {"cmd": "exit 3", "timeout_s": 5}}})
    ok(call(api, fn, "/populate", "bad-hook", dir=f"{HOME}/proj", seed=1, files=2, kb=1))
    session_id = live_session(api, fn, "bad-hook")["id"]
    assert api.delete(f"/v1/sessions/{session_id}").status_code == 204
    reply = call(api, fn, "/whoami", "bad-hook")
    assert reply.status_code == 409 and "restore hook" in reply.json()["message"]


def test_writing_past_the_workspace_limit_fails_inside_and_the_instance_lives(
    api: httpx.Client, make_fn: MakeFn
) -> None:
    fn = make_fn({"disk_mb": 16})
    filled = ok(call(api, fn, "/fill", "full", path=f"{HOME}/big", mb=64))
    assert filled["errno"] == 28 and filled["written_mb"] < 17  # ENOSPC inside
    assert ok(call(api, fn, "/whoami", "full"))["instance"]
    assert live_session(api, fn, "full")["workspace"]["quota_bytes"] == 16 << 20


def test_sessions_never_see_each_other_s_workspace(api: httpx.Client, make_fn: MakeFn) -> None:
    """Shared instance: each session has its own directory there, only while it is bound.
    Exclusive instances: another session's files are nowhere in the instance."""
    shared = make_fn({"sessions_per_instance": 4, "max_instances": 1})
    root = f"{HOME}/sessions"
    ok(call(api, shared, "/populate", "a", dir=f"{root}/a", seed="a", files=2, kb=1))
    ok(call(api, shared, "/populate", "b", dir=f"{root}/b", seed="b", files=2, kb=1))
    a = live_session(api, shared, "a")
    assert a["instance_id"] == live_session(api, shared, "b")["instance_id"]
    assert a["workspace"]["path"] == f"{root}/a"
    assert api.delete(f"/v1/sessions/{a['id']}").status_code == 204
    left = ok(call(api, shared, "/tree", "b", dir=root))
    assert left and all(path.startswith("b") for path in left), left  # a's files left with it
    back = ok(call(api, shared, "/tree", "a", dir=f"{root}/a"))
    assert back and "top0.txt" in back  # and came back when a did

    exclusive = make_fn({})
    ok(call(api, exclusive, "/populate", "x", dir=f"{HOME}/secret-x", seed="x", files=2, kb=1))
    seen_by_y = ok(call(api, exclusive, "/tree", "y", dir=HOME))
    assert not any("secret-x" in path for path in seen_by_y)


def test_named_workspaces_are_validated(api: httpx.Client, make_fn: MakeFn) -> None:
    fn = make_fn({})
    bad = api.post(f"/v1/functions/{fn}/sessions", json={"key": "k", "workspace": "../etc"})
    assert bad.status_code == 400 and "workspace" in bad.text
    first = ok(api.post(f"/v1/functions/{fn}/sessions", json={"key": "k1", "workspace": "team-proj"}))
    assert first["workspace"]["storage_path"] == "default/_named/team-proj"
    clash = api.post(f"/v1/functions/{fn}/sessions", json={"key": "k2", "workspace": "team-proj"})
    assert clash.status_code == 409 and "in use" in clash.json()["message"]
    plain = make_fn({"workspace": {"persist": False}})
    refused = api.post(f"/v1/functions/{plain}/sessions", json={"workspace": "team-proj"})
    assert refused.status_code == 400 and "persist" in refused.json()["message"]
    snapshot = api.post(
        f"/v1/sessions/{ok(api.post(f'/v1/functions/{plain}/sessions', json={}))['id']}/snapshot"
    )
    assert snapshot.status_code == 400 and "persist" in snapshot.json()["message"]
    assert api.post("/v1/sessions/ses_unknown/snapshot").status_code == 404
    assert api.get("/v1/workspaces/default/nope/nothing").status_code == 404


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_a_damaged_snapshot_is_an_error_never_an_empty_workspace(
    damage: str, server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory()
    names: list[str] = []
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        fn = make_fn_on(api, names)({})
        ok(call(api, fn, "/populate", "dmg", dir=f"{HOME}/proj", seed=1, files=6, kb=16))
        assert api.delete(f"/v1/sessions/{live_session(api, fn, 'dmg')['id']}").status_code == 204
        stored = server.state_dir / "objects" / storage_path(fn, "dmg")
        objects = [p for p in stored.rglob("*") if p.is_file()]
        assert objects, "the snapshot should be in the local object store"
        for path in objects:
            if damage == "missing":
                path.unlink()
            elif "snapshots" not in path.parts:  # the objects, not the manifest
                path.write_bytes(os.urandom(path.stat().st_size or 16))
        reply = call(api, fn, "/whoami", "dmg")
        assert reply.status_code == 409, reply.text
        assert reply.json()["code"] == "workspace_corrupt"
        workspace = f"/v1/workspaces/{storage_path(fn, 'dmg')}"
        released = lambda: ok(api.get(workspace))["session_id"] is None  # noqa: E731
        wait_for(released, what="the failed session to let go of its workspace")
        assert ok(api.get(workspace))["error"]
        assert api.delete(f"/v1/workspaces/{storage_path(fn, 'dmg')}").status_code == 204
        assert ok(call(api, fn, "/tree", "dmg", dir=HOME)) is not None  # starts afresh once deleted


def test_tenant_over_its_storage_quota_is_refused_clearly(server_factory: ServerFactory) -> None:
    server = server_factory(env={"AGENTCELL_TENANT_STORAGE_QUOTA_MB": "1"})
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        fn = make_fn_on(api, [])({})
        session = ok(api.post(f"/v1/functions/{fn}/sessions", json={"key": "q"}))
        ok(call(api, fn, "/populate", "q", dir=f"{HOME}/proj", seed="q", files=20, kb=110))
        assert api.post(f"/v1/sessions/{session['id']}/snapshot").status_code == 201
        refused = api.post(f"/v1/sessions/{session['id']}/snapshot")
        assert refused.status_code == 429 and "quota" in refused.json()["message"]
        listing = ok(api.get("/v1/workspaces"))
        assert listing["quota_bytes"] == 1 << 20 and listing["stored_bytes"] >= 2 << 20


def test_server_and_instance_killed_mid_persist_leave_the_previous_snapshot(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    state = tmp_path / "kill-state"
    server = server_factory(state)
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        fn = make_fn_on(api, [])({})
        session = ok(api.post(f"/v1/functions/{fn}/sessions", json={"key": "k"}))
        ok(call(api, fn, "/populate", "k", dir=f"{HOME}/proj", seed="one", files=60, kb=256))
        before = without_excluded(ok(call(api, fn, "/tree", "k", dir=f"{HOME}/proj")))
        assert api.post(f"/v1/sessions/{session['id']}/snapshot").status_code == 201
        ok(call(api, fn, "/populate", "k", dir=f"{HOME}/proj", seed="two", files=60, kb=256))
        after = without_excluded(ok(call(api, fn, "/tree", "k", dir=f"{HOME}/proj")))
        persisting = threading.Thread(target=_snapshot_ignoring_errors, args=(api, session["id"]))
        persisting.start()
        time.sleep(0.05)
        server.stop(signal.SIGKILL)
        persisting.join()
    init_pid = json.loads((state / "instances" / f"{session['instance_id']}.json").read_text())["init_pid"]
    restarted = server_factory(state)
    os.kill(init_pid, signal.SIGKILL)  # the re-adopted instance dies too: no last snapshot
    with httpx.Client(headers=AUTH, base_url=restarted.url, timeout=60) as api:
        wait_for(lambda: not live_session(api, fn, "k"), what="the killed instance's session to end")
        restored = ok(call(api, fn, "/tree", "k", dir=f"{HOME}/proj"))
        assert restored in (before, after), "a snapshot must be whole: the old one or the new one"
        api.delete(f"/v1/functions/{fn}")


def _snapshot_ignoring_errors(api: httpx.Client, session_id: str) -> None:
    """(the server is killed while it answers)"""
    with contextlib.suppress(httpx.HTTPError):
        api.post(f"/v1/sessions/{session_id}/snapshot")


def test_a_session_on_a_shared_instance_has_its_own_size_limit(api: httpx.Client, make_fn: MakeFn) -> None:
    fn = make_fn({"sessions_per_instance": 4, "max_instances": 1, "disk_mb": 16})
    root = f"{HOME}/sessions"
    filled = ok(call(api, fn, "/fill", "big", path=f"{root}/big/blob", mb=64))
    assert filled["errno"] == 28 and filled["written_mb"] < 17  # ENOSPC at the session's own limit
    room = ok(call(api, fn, "/fill", "small", path=f"{root}/small/blob", mb=8))
    assert room["errno"] is None  # its neighbour's full workspace takes nothing from it
    assert live_session(api, fn, "big")["instance_id"] == live_session(api, fn, "small")["instance_id"]
