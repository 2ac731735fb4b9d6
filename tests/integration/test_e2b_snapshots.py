"""Sandbox snapshots and fork through the official E2B SDK against a real agentcell server: a
snapshot keeps the files of /home/user (not processes), sandboxes start from it, the source keeps
running untouched; fork gives independent copies; snapshots are listed, deleted, kept per tenant
and survive a server restart. One server per module (with API keys, for the tenant checks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox, SandboxException, SandboxNotFoundException

from tests.conftest import TEST_API_KEY, ServerProcess
from tests.integration.conftest import e2b_variables

KEYS = {"AGENTCELL_AUTH": "keys"}
ADMIN = {"X-API-Key": TEST_API_KEY}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("e2b-snapshots") / "state", env=KEYS)
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def e2b_env(server: ServerProcess) -> Iterator[ServerProcess]:
    with e2b_variables(server.url):
        yield server


def _stored(server: ServerProcess, tenant: str = "default") -> list[str]:
    """The snapshot prefixes in the object store (`{id}-{version}`, `fork-{sandbox id}-…`)."""
    root = server.state_dir / "objects" / tenant / "_snapshots"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def _ids(sandbox_id: str | None = None, name: str | None = None) -> list[str]:
    return [s.snapshot_id for s in Sandbox.list_snapshots(sandbox_id=sandbox_id, name=name).next_items()]


def test_a_sandbox_from_a_snapshot_has_the_files_of_then_and_the_source_runs_on(
    e2b_env: ServerProcess,
) -> None:
    sbx = Sandbox.create(timeout=120, envs={"FROM_CREATE": "kept"})
    made: list[Sandbox] = []
    try:
        sbx.files.write("notes/before.txt", "then")
        sbx.commands.run("sleep 300", background=True)
        end_at = sbx.get_info().end_at
        snapshot = sbx.create_snapshot(mode="full")  # accepted: files only
        assert snapshot.snapshot_id.startswith("snap_") and snapshot.names == []
        assert any(p.startswith(snapshot.snapshot_id) for p in _stored(e2b_env))

        sbx.files.write("notes/after.txt", "later")
        sbx.files.write("notes/before.txt", "changed")
        # the source is thawed, running, with its id, deadline and processes
        info = sbx.get_info()
        assert (info.sandbox_id, info.end_at) == (sbx.sandbox_id, end_at)
        assert [p.cmd for p in sbx.commands.list()] == ["/bin/bash"]
        assert sbx.commands.run("cat notes/before.txt").stdout == "changed"

        made.append(new := Sandbox.create(snapshot.snapshot_id, timeout=60, metadata={"from": "snap"}))
        assert new.sandbox_id != sbx.sandbox_id
        assert new.files.read("notes/before.txt") == "then"
        assert not new.files.exists("notes/after.txt")
        assert new.commands.run("echo $FROM_CREATE").stdout == "kept\n"  # the source's env
        assert new.commands.list() == []  # processes are not kept
        new_info = new.get_info()
        assert (new_info.template_id, new_info.metadata) == (snapshot.snapshot_id, {"from": "snap"})
        assert sbx.files.read("notes/before.txt") == "changed"  # independent of the source
    finally:
        for each in (*made, sbx):
            each.kill()
    # the snapshot outlives its source
    again = Sandbox.create(snapshot.snapshot_id, timeout=30)
    try:
        assert again.files.read("notes/before.txt") == "then"
    finally:
        again.kill()
        assert Sandbox.delete_snapshot(snapshot.snapshot_id) is True


def test_fork_gives_independent_sandboxes(e2b_env: ServerProcess) -> None:
    """Private ports stay private in the forks (their traffic needs their own token)."""
    sbx = Sandbox.create(timeout=120, network={"allow_public_traffic": False})
    forks: list[Sandbox] = []
    try:
        sbx.files.write("shared.txt", "one")
        results = sbx.fork(count=2, timeout=60)
        forks = [f for f in results if isinstance(f, Sandbox)]
        assert len(forks) == 2, results
        ids = {sbx.sandbox_id, *(f.sandbox_id for f in forks)}
        assert len(ids) == 3
        for fork in forks:
            network = fork.get_info().network
            assert network is not None and network.get("allow_public_traffic") is False
        forks[0].files.write("shared.txt", "changed in the first fork")
        assert forks[1].files.read("shared.txt") == "one"
        assert sbx.files.read("shared.txt") == "one"
        assert sbx.is_running()
        assert not [p for p in _stored(e2b_env) if p.startswith("fork-")]  # its snapshot is gone
        assert _ids(sandbox_id=sbx.sandbox_id) == []  # and never listed
    finally:
        for each in (*forks, sbx):
            each.kill()


def test_list_with_filters_and_pages_then_delete(e2b_env: ServerProcess) -> None:
    sbx = Sandbox.create(timeout=60)
    try:
        first = sbx.create_snapshot()
        named = sbx.create_snapshot(name="nightly")
        assert named.names == ["nightly"]
        assert _ids(sandbox_id=sbx.sandbox_id) == [first.snapshot_id, named.snapshot_id]
        assert _ids(name="nightly") == [named.snapshot_id]
        assert _ids(name=first.snapshot_id) == [first.snapshot_id]
        paginator = Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id, limit=1)
        assert [s.snapshot_id for s in paginator.next_items()] == [first.snapshot_id]
        assert paginator.has_next
        assert [s.snapshot_id for s in paginator.next_items()] == [named.snapshot_id]
        assert not paginator.has_next

        sbx.files.write("v2.txt", "second")  # the same name again: same id, the new files
        assert sbx.create_snapshot(name="nightly").snapshot_id == named.snapshot_id
        assert _ids(sandbox_id=sbx.sandbox_id) == [first.snapshot_id, named.snapshot_id]
        assert len([p for p in _stored(e2b_env) if p.startswith(named.snapshot_id)]) == 1
        from_named = Sandbox.create(named.snapshot_id, timeout=30)
        assert from_named.files.read("v2.txt") == "second"
        from_named.kill()

        assert Sandbox.delete_snapshot(first.snapshot_id) is True
        assert Sandbox.delete_snapshot(first.snapshot_id) is False
        assert not [p for p in _stored(e2b_env) if p.startswith(first.snapshot_id)]
        assert _ids(sandbox_id=sbx.sandbox_id) == [named.snapshot_id]
        with pytest.raises(SandboxException, match=r"404: snapshot .* not found"):
            Sandbox.create(first.snapshot_id)
        assert Sandbox.delete_snapshot(named.snapshot_id) is True
    finally:
        sbx.kill()


def test_refusals(e2b_env: ServerProcess) -> None:
    """A missing or paused sandbox, a bad name, a fork count outside 1..20: 4xx that say why."""
    with pytest.raises(SandboxNotFoundException):
        Sandbox.create_snapshot("sbx_0000000000000000")
    with pytest.raises(SandboxNotFoundException):
        Sandbox.fork("sbx_0000000000000000", count=1)
    sbx = Sandbox.create(timeout=60)
    try:
        with pytest.raises(SandboxException, match="snapshot name"):
            sbx.create_snapshot(name="no spaces")
        url = f"{e2b_env.url}/e2b/sandboxes/{sbx.sandbox_id}/fork"
        for count in (0, 21):
            reply = httpx.post(url, json={"count": count}, headers=ADMIN)
            assert reply.status_code == 400, reply.text
            assert reply.json() == {"code": 400, "message": f"count must be between 1 and 20, got {count}"}
        assert sbx.pause() is True
        with pytest.raises(SandboxException, match="is paused; resume it"):
            sbx.create_snapshot()
        reply = httpx.post(url, json={"count": 1}, headers=ADMIN)
        assert reply.status_code == 409 and "is paused" in reply.json()["message"]
    finally:
        sbx.kill()
    with pytest.raises(SandboxException, match="404: snapshot 'snap_00' not found"):
        Sandbox.create("snap_00")


def _tenant_key(server: ServerProcess, name: str) -> str:
    assert httpx.post(f"{server.url}/v1/tenants", json={"name": name}, headers=ADMIN).status_code == 201
    created = httpx.post(f"{server.url}/v1/tenants/{name}/keys", json={"scopes": ["*"]}, headers=ADMIN)
    key: str = created.json()["key"]
    return key


def test_another_tenant_can_neither_list_use_nor_delete_a_snapshot(e2b_env: ServerProcess) -> None:
    other = _tenant_key(e2b_env, "snapco")
    sbx = Sandbox.create(timeout=60)
    try:
        snapshot = sbx.create_snapshot(name="mine")
        assert snapshot.snapshot_id not in [
            s.snapshot_id for s in Sandbox.list_snapshots(api_key=other).next_items()
        ]
        with pytest.raises(SandboxNotFoundException):
            Sandbox.create_snapshot(sbx.sandbox_id, api_key=other)
        with pytest.raises(SandboxException, match=r"404: snapshot .* not found"):
            Sandbox.create(snapshot.snapshot_id, api_key=other)
        assert Sandbox.delete_snapshot(snapshot.snapshot_id, api_key=other) is False
        # the other tenant's own snapshot of the same name is its own
        theirs = Sandbox.create(timeout=60, api_key=other)
        try:
            assert theirs.create_snapshot(name="mine").snapshot_id != snapshot.snapshot_id
        finally:
            theirs.kill()
        assert _ids(name="mine") == [snapshot.snapshot_id]
        assert Sandbox.delete_snapshot(snapshot.snapshot_id) is True
    finally:
        sbx.kill()


def test_a_snapshot_survives_a_server_restart(server: ServerProcess) -> None:
    """Last in the module: it stops the module's server and starts another on its state."""
    with e2b_variables(server.url):
        sbx = Sandbox.create(timeout=60)
        sbx.files.write("survivor.txt", "still here")
        snapshot = sbx.create_snapshot(name="durable")
        sbx.kill()
    assert server.stop() == 0, server.log()
    second = ServerProcess(Path(server.state_dir), env=KEYS)
    try:
        with e2b_variables(second.url):
            assert _ids(name="durable") == [snapshot.snapshot_id]
            again = Sandbox.create(snapshot.snapshot_id, timeout=30)
            try:
                assert again.files.read("survivor.txt") == "still here"
            finally:
                again.kill()
            assert Sandbox.delete_snapshot(snapshot.snapshot_id) is True
            assert _ids() == []
            assert _stored(second) == []
    finally:
        assert second.stop() == 0, second.log()
