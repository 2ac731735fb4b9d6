"""Pause and resume in agentcell's own API, SDK (sync and async) and CLI, against a real server:
same id, files back, error envelopes for the wrong states."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from agentcell.client import AsyncSandbox, ConflictError, NotFoundError, Sandbox
from tests.conftest import AUTH, ServerFactory
from tests.integration.test_cli import agentcell
from tests.integration.test_workspaces import wait_for


def test_sdk_pause_then_resume_by_id(server_url: str) -> None:
    tag = {"run": uuid.uuid4().hex[:12]}
    sbx = Sandbox.create(api_url=server_url, metadata=tag, env={"A": "1"}, timeout_s=120)
    try:
        sbx.files.write("/home/user/keep/me.txt", b"saved")
        sbx.commands.run("sleep 300", background=True)
        assert sbx.pause().state == "paused"
        with pytest.raises(ConflictError, match="already paused"):
            sbx.pause()
        with pytest.raises(ConflictError, match="is paused; resume it first"):
            sbx.set_timeout(100)
        assert [(s.id, s.state) for s in Sandbox.list(api_url=server_url, metadata=tag)] == [
            (sbx.id, "paused")
        ]
        assert Sandbox.list(api_url=server_url, metadata=tag, state="running") == []
        assert sbx.get_info().state == "paused" and not sbx.is_running()
        for in_sandbox_call in (lambda: sbx.commands.run("true"), lambda: sbx.files.read("/home/user/x")):
            with pytest.raises(ConflictError, match="is paused; resume it first"):
                in_sandbox_call()
        created_at = sbx.get_info().created_at
        with Sandbox.resume(sbx.id, api_url=server_url, timeout_s=60) as again:
            assert again.id == sbx.id and again.info.state == "running"
            assert again.info.created_at == created_at
            assert again.files.read("/home/user/keep/me.txt") == b"saved"
            assert again.commands.run("echo $A; pgrep -c sleep || true").stdout == "1\n0\n"
            with pytest.raises(ConflictError, match="is running, not paused"):
                Sandbox.resume(sbx.id, api_url=server_url)
    finally:
        sbx.close()
    with pytest.raises(NotFoundError):
        Sandbox.resume(sbx.id, api_url=server_url)


async def test_async_pause_resume_and_kill_of_a_paused_sandbox(server_url: str) -> None:
    sbx = await AsyncSandbox.create(api_url=server_url, timeout_s=60)
    try:
        await sbx.files.write("/home/user/x", b"x")
        await sbx.pause()
        async with AsyncSandbox.resume(sbx.id, api_url=server_url) as again:
            assert await again.files.read("/home/user/x") == b"x"
            await again.pause()
        assert await sbx.kill() is False  # the async with killed the paused sandbox
        with pytest.raises(NotFoundError):
            await AsyncSandbox.resume(sbx.id, api_url=server_url)
    finally:
        await sbx.aclose()


def test_rest_errors_use_the_envelope(api: httpx.Client) -> None:
    unknown = api.post("/v1/sandboxes/sbx_0000000000000000/pause")
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    created = api.post("/v1/sandboxes", json={"timeout_s": 60}).json()
    try:
        running = api.post(f"/v1/sandboxes/{created['id']}/resume")
        assert (running.status_code, running.json()["code"]) == (409, "conflict")
        bad = api.post(f"/v1/sandboxes/{created['id']}/resume", json={"timeout_s": 0})
        assert (bad.status_code, bad.json()["code"]) == (400, "invalid_argument")
    finally:
        api.delete(f"/v1/sandboxes/{created['id']}")


def test_cli_pause_and_resume(server_url: str) -> None:
    created = agentcell(server_url, "sandbox", "create", "--on-timeout", "pause", "--timeout", "60")
    sandbox_id = created.stdout.strip()
    try:
        assert agentcell(server_url, "sandbox", "pause", sandbox_id).returncode == 0
        got = json.loads(agentcell(server_url, "sandbox", "get", sandbox_id).stdout)
        assert got["state"] == "paused"
        listed = agentcell(server_url, "sandbox", "ls", "--state", "paused", "--json")
        assert sandbox_id in {s["id"] for s in json.loads(listed.stdout)}
        again = agentcell(server_url, "sandbox", "pause", sandbox_id)
        assert again.returncode == 1 and "already paused" in again.stderr
        resumed = json.loads(agentcell(server_url, "sandbox", "resume", sandbox_id, "--json").stdout)
        assert (resumed["id"], resumed["state"]) == (sandbox_id, "running")
    finally:
        agentcell(server_url, "sandbox", "kill", sandbox_id)


@pytest.mark.parametrize("overtaken_by", ["pause", "kill"])
async def test_a_write_overtaken_by_a_pause_or_a_kill_fails(server_url: str, overtaken_by: str) -> None:
    """A file still being uploaded when its sandbox is paused or killed gets a 409, not a 200 for a
    file that is not there, and its half is in no snapshot: the sandbox resumes without it."""
    async with httpx.AsyncClient(base_url=server_url, headers=AUTH, timeout=30) as client:
        sandbox_id = (await client.post("/v1/sandboxes", json={"timeout_s": 60})).json()["id"]
        url = f"/v1/sandboxes/{sandbox_id}"
        first_sent = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            yield b"x" * 65536
            first_sent.set()
            await asyncio.sleep(1)  # the pause or kill comes meanwhile
            yield b"y" * 65536

        put = asyncio.create_task(
            client.put(f"{url}/files", params={"path": "slow.bin"}, content=slow_body())
        )
        await first_sent.wait()
        await asyncio.sleep(0.2)
        if overtaken_by == "pause":
            assert (await client.post(f"{url}/pause")).status_code == 200
        else:
            assert (await client.delete(url)).status_code == 204
        reply = await put
        happened = "was paused" if overtaken_by == "pause" else "ended"
        assert (
            reply.status_code == 409 and f"{happened} while the file was written" in reply.json()["message"]
        )
        if overtaken_by == "pause":
            assert (await client.post(f"{url}/resume")).status_code == 200
            listing = (await client.get(f"{url}/files/list", params={"path": "/home/user"})).json()
            assert [e["name"] for e in listing["entries"]] == []
            await client.delete(url)


def test_a_sparse_file_and_hard_links_survive_a_pause(server_url: str, api: httpx.Client) -> None:
    """A 500 MiB sparse file in a 64 MiB sandbox and two names of one file pause and resume as they
    were: sizes, bytes, holes, one inode (this resume used to fail for good, "ran out of space")."""
    sbx = Sandbox.create(api_url=server_url, disk_mb=64, timeout_s=120)
    try:
        setup = "cd; echo important > keep.txt; truncate -s 500M big.sparse; ln keep.txt keep.link"
        assert sbx.commands.run(setup).exit_code == 0
        assert api.post(f"/v1/sandboxes/{sbx.id}/pause").status_code == 200
        resumed = api.post(f"/v1/sandboxes/{sbx.id}/resume")
        assert resumed.status_code == 200, resumed.json()
        assert sbx.files.read("/home/user/keep.txt") == b"important\n"
        check = "cd; stat -c '%n %s %b %h %i' big.sparse keep.txt keep.link"
        stats = {
            name: rest
            for name, *rest in (line.split() for line in sbx.commands.run(check).stdout.splitlines())
        }
        assert stats["big.sparse"][:2] == [str(500 << 20), "0"]
        assert stats["keep.txt"][2:] == stats["keep.link"][2:] and stats["keep.txt"][2] == "2"
    finally:
        api.delete(f"/v1/sandboxes/{sbx.id}")
        sbx.close()


def test_a_full_disk_pauses_and_resumes(server_url: str, api: httpx.Client) -> None:
    """A sandbox whose disk its user filled to the last block resumes with every byte: what a
    paused sandbox held fits the same disk again, so a pause is never a trap."""
    sbx = Sandbox.create(api_url=server_url, disk_mb=64, timeout_s=120)
    try:
        fill = "cd; dd if=/dev/urandom of=fill bs=1M 2>/dev/null; df --output=avail -k . | tail -1"
        assert sbx.commands.run(fill).stdout.split() == ["0"]
        before = sbx.commands.run("cd; sha256sum fill").stdout
        assert api.post(f"/v1/sandboxes/{sbx.id}/pause").status_code == 200
        resumed = api.post(f"/v1/sandboxes/{sbx.id}/resume")
        assert resumed.status_code == 200, resumed.json()
        assert sbx.commands.run("cd; sha256sum fill").stdout == before
    finally:
        api.delete(f"/v1/sandboxes/{sbx.id}")
        sbx.close()


def test_a_1_tib_sparse_file_pauses_in_seconds_and_a_larger_one_is_refused(
    server_url: str, api: httpx.Client
) -> None:
    """`truncate -s 1T` in a 64 MiB sandbox pauses and resumes in seconds (its holes are not read;
    this pause used to take ~10 minutes of server CPU); a 2 TiB file makes the pause fail at once
    with a 409 naming it, and the sandbox keeps running."""
    sbx = Sandbox.create(api_url=server_url, disk_mb=64, timeout_s=120)
    try:
        assert sbx.commands.run("cd; echo note > keep.txt; truncate -s 2T huge.sparse").exit_code == 0
        started = time.monotonic()
        refused = api.post(f"/v1/sandboxes/{sbx.id}/pause")
        assert time.monotonic() - started < 20
        assert refused.status_code == 409, refused.json()
        assert "'huge.sparse'" in refused.json()["message"] and "shrink it" in refused.json()["message"]
        assert sbx.commands.run("cd; truncate -s 1T huge.sparse").exit_code == 0
        started = time.monotonic()
        assert api.post(f"/v1/sandboxes/{sbx.id}/pause").status_code == 200
        resumed = api.post(f"/v1/sandboxes/{sbx.id}/resume")
        assert resumed.status_code == 200, resumed.json()
        assert time.monotonic() - started < 20
        stat = sbx.commands.run("cd; stat -c '%s %b' huge.sparse; cat keep.txt").stdout
        assert stat == f"{1 << 40} 0\nnote\n"
    finally:
        api.delete(f"/v1/sandboxes/{sbx.id}")
        sbx.close()


def test_a_server_killed_mid_pause_leaves_no_objects_after_its_restart(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """SIGKILL of the server while a pause uploads 300 MB: its blobs used to stay under
    `_sandboxes/<id>/blobs/` for ever (no row, no quota, no listing). The restarted server sweeps
    them (the pause was marked before its first upload), keeps nothing half-paused, and works."""
    state = tmp_path / "kill-state"
    server = server_factory(state)
    sbx = Sandbox.create(api_url=server.url, memory_mb=512, disk_mb=512, timeout_s=300)
    prefix = state / "objects" / "default" / "_sandboxes" / sbx.id
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=120) as api:
        assert sbx.commands.run("cd; head -c 300M /dev/urandom > big").exit_code == 0
        pausing = threading.Thread(target=_ignoring_errors, args=(api.post, f"/v1/sandboxes/{sbx.id}/pause"))
        pausing.start()
        wait_for(lambda: any((prefix / "blobs").glob("*")), what="the pause's first blobs")
        server.stop(signal.SIGKILL)
        pausing.join()
    sbx.close()
    assert not (prefix / "snapshots").exists(), "the kill came too late: the pause finished"
    assert any((prefix / "blobs").iterdir())  # the leak, until the restart
    restarted = server_factory(state)
    with httpx.Client(headers=AUTH, base_url=restarted.url, timeout=120) as api:
        wait_for(lambda: not prefix.exists(), what="the unfinished pause's objects to be swept")
        assert api.get(f"/v1/sandboxes/{sbx.id}").status_code == 404
        assert api.get("/v1/workspaces").json()["workspaces"] == []
        again = Sandbox.create(api_url=restarted.url, timeout_s=60)
        try:
            again.files.write("/home/user/x", b"x")
            assert api.post(f"/v1/sandboxes/{again.id}/pause").status_code == 200
            assert api.post(f"/v1/sandboxes/{again.id}/resume").status_code == 200
            assert again.files.read("/home/user/x") == b"x"
        finally:
            api.delete(f"/v1/sandboxes/{again.id}")
            again.close()
    assert "a pause begun at" in restarted.log() and "never finished" in restarted.log()


def _ignoring_errors(post: Callable[[str], httpx.Response], url: str) -> None:
    """(the server is killed while it answers)"""
    with contextlib.suppress(httpx.HTTPError):
        post(url)
