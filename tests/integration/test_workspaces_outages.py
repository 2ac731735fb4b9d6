"""The object store (a real S3 server, SeaweedFS) stops answering — SIGSTOP, as a hung or
partitioned endpoint does — while workspaces are saved and restored through the real server:
nothing is lost, and the answers say "unavailable, retry" rather than "your workspace is corrupt".

AGENTCELL_S3_TIMEOUT_S=2 keeps each stalled S3 request (60 s by default) short."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agentcell.client import Sandbox
from tests.conftest import AUTH, ServerFactory, ServerProcess
from tests.integration.test_workspaces import HOME, call, live_session, make_fn_on, ok, storage_path
from tests.s3server import S3Server

FILE = f"{HOME}/notes.txt"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """A server of this module's own: stopping it must not stall other tests."""
    with S3Server() as server:
        yield server


@contextlib.contextmanager
def stopped(s3: S3Server) -> Iterator[None]:
    """The S3 server frozen (its sockets still accept: requests hang until the client's timeout)."""
    assert s3._proc is not None
    pid = s3._proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def start(server_factory: ServerFactory, s3: S3Server, state: Any = None) -> ServerProcess:
    env = {
        "AGENTCELL_STORE": f"s3://{s3.bucket}/outages",
        "AGENTCELL_S3_ENDPOINT": s3.endpoint,
        "AGENTCELL_S3_ACCESS_KEY": "test",
        "AGENTCELL_S3_SECRET_KEY": "test",
        "AGENTCELL_S3_TIMEOUT_S": "2",
    }
    return server_factory(state_dir=state, env=env)


def write(api: httpx.Client, fn: str, key: str, text: str) -> None:
    ok(call(api, fn, "/write", key, path=FILE, text=text))


def read(api: httpx.Client, fn: str, key: str) -> str:
    reply = call(api, fn, "/file", key, path=FILE)
    assert reply.status_code == 200, reply.text
    text: str = reply.json()["text"]
    return text


def assert_unavailable(reply: httpx.Response, *words: str) -> None:
    assert reply.status_code == 503, reply.text
    assert reply.json()["code"] == "unavailable" and reply.headers["retry-after"]
    for word in words:
        assert word in reply.json()["message"]


def test_a_delete_during_an_outage_answers_503_and_keeps_the_session(
    server_factory: ServerFactory, s3: S3Server
) -> None:
    """The tester's data loss: 204 after the save failed, the instance destroyed, the write gone."""
    server = start(server_factory, s3)
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        fn = make_fn_on(api, [])({})
        write(api, fn, "k", "first")
        session = live_session(api, fn, "k")
        ok(api.post(f"/v1/sessions/{session['id']}/snapshot"))
        write(api, fn, "k", "the latest words")
        with stopped(s3):
            assert_unavailable(api.delete(f"/v1/sessions/{session['id']}"), "nothing was lost")
        assert live_session(api, fn, "k")["instance_id"] == session["instance_id"]
        assert read(api, fn, "k") == "the latest words"
        assert api.delete(f"/v1/sessions/{session['id']}").status_code == 204
        assert read(api, fn, "k") == "the latest words"  # restored on a new instance
        assert live_session(api, fn, "k")["instance_id"] != session["instance_id"]


def test_a_restore_during_an_outage_answers_503_and_a_retry_gets_the_files(
    server_factory: ServerFactory, s3: S3Server
) -> None:
    """Not 409 workspace_corrupt, and nothing recorded against the workspace."""
    server = start(server_factory, s3)
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        fn = make_fn_on(api, [])({})
        write(api, fn, "k", "saved")
        assert api.delete(f"/v1/sessions/{live_session(api, fn, 'k')['id']}").status_code == 204
        with stopped(s3):
            assert_unavailable(call(api, fn, "/whoami", "k"), "retry")
        assert ok(api.get(f"/v1/workspaces/{storage_path(fn, 'k')}"))["error"] is None
        assert read(api, fn, "k") == "saved"


def test_a_shutdown_during_an_outage_leaves_the_instance_for_the_next_start(
    server_factory: ServerFactory, s3: S3Server
) -> None:
    """SIGTERM while S3 is down: every save fails, so the instances are left running (as a
    SIGKILL would have left them) and the next server adopts them with their files."""
    first = start(server_factory, s3)
    with httpx.Client(headers=AUTH, base_url=first.url, timeout=60) as api:
        fn = make_fn_on(api, [])({})
        write(api, fn, "k", "never saved")
        session = live_session(api, fn, "k")
    with stopped(s3):
        code = first.stop()
    second = start(server_factory, s3, first.state_dir)  # (also: it stops what the first left)
    assert code == 0
    assert "kept running for the next start" in first.log_path.read_text()
    with httpx.Client(headers=AUTH, base_url=second.url, timeout=60) as api:
        assert live_session(api, fn, "k")["instance_id"] == session["instance_id"]
        assert read(api, fn, "k") == "never saved"
        assert "left running" in ok(api.get(f"/v1/workspaces/{storage_path(fn, 'k')}"))["error"]
        assert api.delete(f"/v1/sessions/{session['id']}").status_code == 204
        assert read(api, fn, "k") == "never saved"


def test_a_resume_during_an_outage_answers_503_and_the_sandbox_stays_paused(
    server_factory: ServerFactory, s3: S3Server
) -> None:
    server = start(server_factory, s3)
    sbx = Sandbox.create(api_url=server.url, timeout_s=60)
    try:
        sbx.files.write(f"{HOME}/keep.txt", b"paused files")
        sbx.pause()
        with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api, stopped(s3):
            assert_unavailable(api.post(f"/v1/sandboxes/{sbx.id}/resume", json={}), "stays paused")
            assert ok(api.get(f"/v1/sandboxes/{sbx.id}"))["state"] == "paused"
        with Sandbox.resume(sbx.id, api_url=server.url) as again:
            assert again.files.read(f"{HOME}/keep.txt") == b"paused files"
    finally:
        sbx.close()
