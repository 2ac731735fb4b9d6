"""Sandbox snapshots and fork on agentcell's own API, SDK and CLI against the shared real server: a
sandbox from a snapshot has the files of then (not those written after), a fork has the files of
now, snapshots are listed, fetched and deleted, another tenant finds none of them, and bad input
is a 4xx that says what to change."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from agentcell.cli.main import cli as main
from agentcell.client import Agentcell, AsyncAgentcell, AsyncSandbox, InvalidArgumentError, NotFoundError
from agentcell.errors import Conflict
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.server.clock import FakeClock
from agentcell.server.meta.records import SandboxSnapshotRecord, UnfinishedSaveRecord
from agentcell.server.meta.sqlite import SqliteMetaStore
from agentcell.server.sandbox.fake import FakeDriver
from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.sandbox_snapshots import SandboxSnapshots
from agentcell.server.scheduler.sandboxes import SandboxService
from agentcell.server.scheduler.workspaces import WorkspaceKeeper
from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.snapshots import Snapshots
from tests.conftest import ServerProcess
from tests.service_loop import running


async def test_a_snapshot_starts_sandboxes_with_the_files_of_then_and_forks_have_those_of_now(
    server_url: str,
) -> None:
    name = "setup-" + uuid.uuid4().hex[:8]
    async with (
        AsyncAgentcell(api_url=server_url) as client,
        AsyncSandbox.create(api_url=server_url, timeout_s=120, env={"FROM_SOURCE": "1"}) as sbx,
    ):
        await sbx.files.write("/home/user/notes/before.txt", "then")
        snap = await sbx.create_snapshot(name=name)
        assert (snap.id[:5], snap.name, snap.sandbox_id, snap.template) == ("snap_", name, sbx.id, "base")
        await sbx.files.write("/home/user/notes/after.txt", "later")
        await sbx.files.write("/home/user/notes/before.txt", "changed")

        async with AsyncSandbox.create(api_url=server_url, snapshot=snap.id, env={"MINE": "2"}) as copy:
            assert await copy.files.read_text("/home/user/notes/before.txt") == "then"
            assert not await copy.files.exists("/home/user/notes/after.txt")
            assert copy.info.template == "base" and copy.info.env_keys == ["FROM_SOURCE", "MINE"]
        assert await sbx.is_running()  # the source runs on

        forks = await sbx.fork(2, timeout_s=60)
        try:
            assert len({f.id for f in forks if isinstance(f, AsyncSandbox)} - {sbx.id}) == 2, forks
            for fork in forks:
                assert isinstance(fork, AsyncSandbox)
                assert await fork.files.read_text("/home/user/notes/after.txt") == "later"
        finally:
            for fork in forks:
                if isinstance(fork, AsyncSandbox):
                    await fork.__aexit__(None, None, None)

        assert [s.id for s in await client.snapshots.list(sandbox_id=sbx.id)] == [snap.id]  # forks' are gone
        assert [s.id for s in await client.snapshots.list(name=name)] == [snap.id]
        assert (await client.snapshots.get(snap.id)).created_at == snap.created_at
        assert await client.snapshots.delete(snap.id) is True
        with pytest.raises(NotFoundError, match="not found"):
            await client.snapshots.get(snap.id)
        assert await client.snapshots.delete(snap.id) is False


@pytest.fixture
def sandbox(api: httpx.Client) -> Iterator[str]:
    reply = api.post("/v1/sandboxes", json={"timeout_s": 60})
    assert reply.status_code == 201, reply.text
    yield reply.json()["id"]
    api.delete(f"/v1/sandboxes/{reply.json()['id']}")


def _refused(reply: httpx.Response, status: int, *phrases: str) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"code", "message", "request_id"}, body
    assert all(phrase in body["message"] for phrase in phrases), body["message"]


def test_bad_input_is_refused_with_what_to_change(api: httpx.Client, sandbox: str) -> None:
    both = api.post("/v1/sandboxes", json={"template": "base", "snapshot": "snap_0123"})
    _refused(both, 400, "template or snapshot, not both")
    _refused(api.post("/v1/sandboxes", json={"snapshot": "base"}), 400, "snapshot must be a snapshot id")
    _refused(api.post("/v1/sandboxes", json={"snapshot": "snap_0123"}), 404, "snapshot 'snap_0123' not found")
    for count in (0, 21):
        _refused(api.post(f"/v1/sandboxes/{sandbox}/fork", json={"count": count}), 400, "count")
    _refused(api.post("/v1/sandboxes/sbx_nope/fork", json={"count": 1}), 404, "sbx_nope")
    _refused(api.post(f"/v1/sandboxes/{sandbox}/snapshots", json={"name": "-x"}), 400, "snapshot name is")
    _refused(api.get("/v1/snapshots/snap_0123"), 404, "not found")
    _refused(api.delete("/v1/snapshots/snap_0123"), 404, "not found")

    snap = api.post(f"/v1/sandboxes/{sandbox}/snapshots", json={"memory_mb": 64})
    _refused(snap, 400, "memory_mb")  # an unknown field
    snap = api.post(f"/v1/sandboxes/{sandbox}/snapshots")
    assert snap.status_code == 201, snap.text
    smaller = api.post("/v1/sandboxes", json={"snapshot": snap.json()["id"], "disk_mb": 16})
    _refused(smaller, 400, "disk_mb must be at least the snapshot's 1024")
    assert api.delete(f"/v1/snapshots/{snap.json()['id']}").status_code == 204


def test_snapshots_are_listed_a_page_at_a_time(server_url: str, api: httpx.Client, sandbox: str) -> None:
    """`GET /v1/snapshots` answers `limit` of them at most, oldest first, with the `next_token` of
    the next page (null on the last); the SDK's `list` follows the pages to the end, `list_page`
    gets one; a bad limit or a token the server did not issue is a 400 saying what to send."""
    taken = [api.post(f"/v1/sandboxes/{sandbox}/snapshots").json()["id"] for _ in range(3)]
    try:
        first = api.get("/v1/snapshots", params={"sandbox_id": sandbox, "limit": 2}).json()
        assert [s["id"] for s in first["snapshots"]] == taken[:2] and first["next_token"]
        params = {"sandbox_id": sandbox, "limit": 2, "next_token": first["next_token"]}
        last = api.get("/v1/snapshots", params=params).json()
        assert [s["id"] for s in last["snapshots"]] == taken[2:] and last["next_token"] is None
        assert api.get("/v1/snapshots", params={"sandbox_id": sandbox}).json()["next_token"] is None

        with Agentcell(api_url=server_url) as client:
            assert [s.id for s in client.snapshots.list(sandbox_id=sandbox, page_size=1)] == taken
            page = client.snapshots.list_page(sandbox_id=sandbox, limit=1, next_token=first["next_token"])
            assert [s.id for s in page.snapshots] == taken[2:] and page.next_token is None
            with pytest.raises(InvalidArgumentError, match="limit"):
                client.snapshots.list(page_size=0)

        for limit in ("0", "-1", "101", str(10**30), "ten"):
            _refused(api.get("/v1/snapshots", params={"limit": limit}), 400, "limit: ", repr(limit))
        for token in ("garbage!", "bm9wZQ==", ""):  # "" is no token: the first page
            reply = api.get("/v1/snapshots", params={"sandbox_id": sandbox, "next_token": token})
            if token:
                _refused(reply, 400, "next_token is not one this server issued", "none for the first page")
            else:
                assert [s["id"] for s in reply.json()["snapshots"]] == taken
    finally:
        for snapshot_id in taken:
            api.delete(f"/v1/snapshots/{snapshot_id}")


def test_another_tenant_finds_none_of_it_and_a_read_key_only_reads(
    api: httpx.Client, sandbox: str, shared_server: ServerProcess
) -> None:
    tenant = "snaps-" + uuid.uuid4().hex[:8]
    assert api.post("/v1/tenants", json={"name": tenant}).status_code == 201
    snap = api.post(f"/v1/sandboxes/{sandbox}/snapshots", json={"name": "mine"}).json()
    try:
        key = api.post(f"/v1/tenants/{tenant}/keys", json={"scopes": ["*"]}).json()["key"]
        with httpx.Client(base_url=shared_server.url, timeout=60, headers={"x-api-key": key}) as other:
            assert other.get("/v1/snapshots").json() == {"snapshots": [], "next_token": None}
            _refused(other.get(f"/v1/snapshots/{snap['id']}"), 404, "not found")
            _refused(other.delete(f"/v1/snapshots/{snap['id']}"), 404, "not found")
            _refused(other.post("/v1/sandboxes", json={"snapshot": snap["id"]}), 404, "not found")
            _refused(other.post(f"/v1/sandboxes/{sandbox}/snapshots"), 404, "not found")
            _refused(other.post(f"/v1/sandboxes/{sandbox}/fork"), 404, "not found")
        reader = api.post("/v1/tenants/default/keys", json={"scopes": ["sandboxes:read"]}).json()
        with httpx.Client(base_url=shared_server.url, timeout=60, headers={"x-api-key": reader["key"]}) as ro:
            assert ro.get(f"/v1/snapshots/{snap['id']}").json()["name"] == "mine"
            _refused(ro.delete(f"/v1/snapshots/{snap['id']}"), 403, "sandboxes:write")
            _refused(ro.post(f"/v1/sandboxes/{sandbox}/fork"), 403, "sandboxes:write")
        api.delete(f"/v1/keys/{reader['id']}")
    finally:
        api.delete(f"/v1/snapshots/{snap['id']}")
        api.delete(f"/v1/tenants/{tenant}")


def cli(server_url: str, *args: str) -> Result:
    """`agentcell ARGS` in this process (the subprocess start-up, ~0.7 s a run, is test_cli.py's)."""
    return CliRunner().invoke(main, ["--url", server_url, *args])


def cli_ok(server_url: str, *args: str) -> str:
    done = cli(server_url, *args)
    assert done.exit_code == 0, f"agentcell {' '.join(args)}: {done.output}"
    return done.stdout


def test_the_cli_takes_lists_starts_forks_and_deletes(
    api: httpx.Client, server_url: str, sandbox: str
) -> None:
    snap = cli_ok(server_url, "sandbox", "snapshot", sandbox, "--name", "cli-" + uuid.uuid4().hex[:8]).strip()
    started: list[str] = []
    try:
        listed = json.loads(cli_ok(server_url, "snapshot", "ls", "--sandbox", sandbox, "--json"))
        assert [s["id"] for s in listed] == [snap]
        assert snap in cli_ok(server_url, "snapshot", "ls")
        assert json.loads(cli_ok(server_url, "snapshot", "get", snap))["sandbox_id"] == sandbox
        started.append(cli_ok(server_url, "sandbox", "create", "--snapshot", snap, "--timeout", "1m").strip())
        forks = json.loads(cli_ok(server_url, "sandbox", "fork", sandbox, "--count", "1", "--json"))
        started += [fork["sandbox"]["id"] for fork in forks]
        assert len(started) == 2 and all(s.startswith("sbx_") for s in started), started
        both = cli(server_url, "sandbox", "create", "--template", "base", "--snapshot", snap)
        assert both.exit_code == 2 and "not both" in both.stderr
        assert json.loads(cli_ok(server_url, "snapshot", "rm", snap, "--json")) == {
            "id": snap,
            "deleted": True,
        }
        again = cli(server_url, "snapshot", "rm", snap)
        assert again.exit_code == 1 and f"snapshot {snap!r} not found" in again.stderr
    finally:
        api.delete(f"/v1/snapshots/{snap}")
        for sid in started:
            api.delete(f"/v1/sandboxes/{sid}")


# -- the workspace keeper's words for snapshots (a fake driver: no server needed) --------------------


def _snapshots_on(
    store: SqliteMetaStore, objects: Path, object_store: LocalObjectStore | None = None
) -> SandboxSnapshots:
    """SandboxSnapshots over a FakeDriver, `store` and a local object store at `objects` (or
    `object_store`): a new keeper on the same stores is a new run of the node (whose marks are then
    an earlier run's)."""
    driver, clock = FakeDriver(objects.parent / "sandboxes"), FakeClock()
    snapshots = Snapshots(object_store or LocalObjectStore(objects), clock)
    keeper = WorkspaceKeeper(driver, snapshots, store, clock, quota_bytes=lambda _: None, node="n")
    service = SandboxService(driver, clock, max_sandboxes=4, pids_max=64, stop_grace_s=0.1)
    pauses = SandboxPauses(service, driver, snapshots, store, keeper, clock)
    return SandboxSnapshots(service, pauses, driver, snapshots, store, keeper, clock)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteMetaStore]:
    store = SqliteMetaStore(tmp_path / "meta.db")
    await store.open()
    yield store
    await store.aclose()


async def test_the_keeper_names_snapshots_as_snapshots(
    store: SqliteMetaStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting a snapshot's workspace is refused naming the snapshot; after a restart, the mark a
    recorded snapshot left goes (its files kept), and an unrecorded snapshot's and a fork's
    leftovers are deleted, each said as what it was (never "a pause", nor "the next save")."""
    async with _running(_snapshots_on(store, tmp_path / "objects")) as snapshots:
        sandbox = await snapshots._sandboxes.create(SandboxCreate())
        kept = await snapshots.take(sandbox.id)
        with pytest.raises(Conflict, match=f"holds the files of snapshot {kept.id}; delete the snapshot"):
            await snapshots._keeper.delete(kept.record.storage_path)
    for path, kind in (
        (kept.record.storage_path, "snapshot"),  # killed after its record, before the mark went
        ("default/_snapshots/snap_00-aa", "snapshot"),  # killed before its record
        (f"default/_snapshots/fork-{sandbox.id}-bb", "fork"),  # a fork's, not deleted
    ):
        (tmp_path / "objects" / path).mkdir(parents=True, exist_ok=True)
        (tmp_path / "objects" / path / "leftover").write_bytes(b"x")
        key = path.rsplit("/", 1)[1]
        await store.put_unfinished_save(
            UnfinishedSaveRecord(path, "n", "r0", "default", "_snapshots", key, kind, 0.0)
        )
    again = _snapshots_on(store, tmp_path / "objects")
    assert await again.load() == 1
    with caplog.at_level(logging.INFO, logger="agentcell.server.scheduler.workspaces"):
        assert len(await again._keeper.sweep_unfinished()) == 3
    said = caplog.text
    assert "its snapshot was taken before the server stopped; kept" in said
    assert "a sandbox snapshot begun at 0.0 was never recorded" in said and "a fork's snapshot" in said
    assert "pause" not in said and "next save" not in said
    assert await store.unfinished_saves("n") == []
    assert (tmp_path / "objects" / kept.record.storage_path / "leftover").exists()
    assert not (tmp_path / "objects" / "default/_snapshots/snap_00-aa").exists()


@contextlib.asynccontextmanager
async def _running(snapshots: SandboxSnapshots) -> AsyncIterator[SandboxSnapshots]:
    """Its sandbox service running (stopped after, with the driver's sandboxes)."""
    try:
        async with running(snapshots._sandboxes):
            yield snapshots
    finally:
        await snapshots._driver.aclose()


class ParkedStore(LocalObjectStore):
    """A local store whose first upload of a large file's chunk waits for `go`: a save stopped
    half-way, after its walk of the files, with `parked` set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.parked, self.go = asyncio.Event(), asyncio.Event()

    async def put(self, key: str, data: bytes) -> None:
        if "/blobs/" in key and not self.go.is_set():
            self.parked.set()
            await self.go.wait()
        await super().put(key, data)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _home(snapshots: SandboxSnapshots, sandbox_id: str) -> dict[str, int]:
    listed = await snapshots._sandboxes.files(sandbox_id).list("/home/user")
    return {entry.name: entry.size for entry in listed}


async def test_a_rename_through_the_api_waits_for_the_snapshot_being_taken(
    store: SqliteMetaStore, tmp_path: Path
) -> None:
    """A file renamed through the files API while a snapshot is saved is in the snapshot under its
    old name and in the sandbox under its new one: the rename waits for the save (which walked the
    files before reading them: a rename meanwhile left the file under neither name in it)."""
    objects = ParkedStore(tmp_path / "objects")
    async with _running(_snapshots_on(store, tmp_path / "objects", objects)) as snapshots:
        sandbox = await snapshots._sandboxes.create(SandboxCreate())
        files = snapshots._sandboxes.files(sandbox.id)
        for name in ("a.bin", "b.bin"):  # large files, read after the walk in this order
            await files.write(f"/home/user/{name}", _one(os.urandom(2 << 20)))
        taking = asyncio.create_task(snapshots.take(sandbox.id))
        await objects.parked.wait()  # a.bin is being uploaded; b.bin is still to be read
        renaming = asyncio.create_task(files.rename("/home/user/b.bin", "/home/user/c.bin"))
        for _ in range(50):  # a rename that does not wait is done by then (no bound on one that does)
            if renaming.done():
                break
            await asyncio.sleep(0.01)
        objects.go.set()
        snap = await taking
        await renaming
        assert await _home(snapshots, sandbox.id) == {"a.bin": 2 << 20, "c.bin": 2 << 20}
        copy = await snapshots.start(snap.id)
        assert await _home(snapshots, copy.id) == {"a.bin": 2 << 20, "b.bin": 2 << 20}


async def test_a_write_streaming_when_a_snapshot_is_taken_lands_after_it(
    store: SqliteMetaStore, tmp_path: Path
) -> None:
    """A snapshot does not wait for an upload still streaming (its body fills a temp file, never
    part of a snapshot): the snapshot is taken without the file, which the write then commits."""
    async with _running(_snapshots_on(store, tmp_path / "objects")) as snapshots:
        sandbox = await snapshots._sandboxes.create(SandboxCreate())
        files = snapshots._sandboxes.files(sandbox.id)
        streaming, more = asyncio.Event(), asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            yield b"first half, "
            streaming.set()
            await more.wait()
            yield b"second half"

        writing = asyncio.create_task(files.write("/home/user/late.txt", slow_body()))
        await streaming.wait()
        snap = await snapshots.take(sandbox.id)
        more.set()
        assert (await writing).size == len(b"first half, second half")
        assert await _home(snapshots, sandbox.id) == {"late.txt": 23}
        copy = await snapshots.start(snap.id)
        assert await _home(snapshots, copy.id) == {}


class ParkedMeta(SqliteMetaStore):
    """A meta store whose first write of a snapshot's record waits for `go` (`parked` set)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.parked, self.go = asyncio.Event(), asyncio.Event()

    async def put_sandbox_snapshot(self, record: SandboxSnapshotRecord) -> None:
        self.parked.set()
        await self.go.wait()
        await super().put_sandbox_snapshot(record)


async def test_a_snapshots_files_are_held_before_its_workspace_row_is_listed(tmp_path: Path) -> None:
    """Between a snapshot's workspace row (which GET /v1/workspaces lists) and its own record, the
    workspaces API cannot delete its files: they were deleted from under the snapshot before."""
    store = ParkedMeta(tmp_path / "meta.db")
    await store.open()
    try:
        async with _running(_snapshots_on(store, tmp_path / "objects")) as snapshots:
            sandbox = await snapshots._sandboxes.create(SandboxCreate())
            await snapshots._sandboxes.files(sandbox.id).write("/home/user/kept.txt", _one(b"kept"))
            taking = asyncio.create_task(snapshots.take(sandbox.id))
            await store.parked.wait()
            [row] = await store.workspaces("default")
            try:
                with pytest.raises(Conflict, match="holds the files of snapshot snap_"):
                    await snapshots._keeper.delete(row.path)
            finally:
                store.go.set()
                snap = await taking
            copy = await snapshots.start(snap.id)
            assert await _home(snapshots, copy.id) == {"kept.txt": 4}
    finally:
        await store.aclose()
