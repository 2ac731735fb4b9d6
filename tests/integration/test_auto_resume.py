"""Auto-resume: a sandbox created with E2B's `lifecycle={"on_timeout": "pause", "auto_resume":
True}` (agentcell's `on_timeout: pause` + `auto_resume: true`) resumes when paused as soon as work
reaches it — an envd or code interpreter call carrying its token or a signed file URL of its, a
command, file or code call of agentcell's API or its MCP server, a request to one of its ports —
with its files, and runs at least 5 minutes from the resume. Calls without its token (or with a
bad or expired signature), and what only controls it (its timeout, its info), leave it paused; so
does a private sandbox's port request without its traffic token, after a server restart too
(SandboxPauses.wake, E2bPorts)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from e2b import Sandbox as E2bSandbox
from e2b import SandboxState
from e2b_code_interpreter import Sandbox as CodeSandbox
from mcp import Client

from agentcell.client import ConflictError, Sandbox
from agentcell.protocol.sandboxes import AUTO_RESUME_MIN_TIMEOUT_S
from tests.conftest import TEST_API_KEY, ServerFactory, ServerProcess
from tests.integration.conftest import E2B_DOMAIN, PRIVATE_TRAFFIC_ENV, TRAFFIC_TOKEN_HEADER, sdk_pointed_at
from tests.integration.test_mcp import streamable

RESUMING = {"on_timeout": "pause", "auto_resume": True}
ADMIN = {"X-API-Key": TEST_API_KEY}


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout_s} s"
        time.sleep(0.05)


def assert_runs_at_least_the_minimum(end_at: datetime, resumed_from: datetime) -> None:
    assert (end_at - resumed_from).total_seconds() >= AUTO_RESUME_MIN_TIMEOUT_S - 1


def test_e2b_files_commands_and_code_resume_a_sandbox_paused_at_its_timeout(e2b_env: str) -> None:
    sbx = CodeSandbox.create(timeout=1, lifecycle=RESUMING)
    try:
        assert sbx.get_info().lifecycle == RESUMING
        sbx.files.write("notes.txt", "kept")
        wait_for(lambda: sbx.get_info().state == SandboxState.PAUSED, "the pause at its 1 s timeout")
        resumed_from = datetime.now(UTC)
        assert sbx.files.read("notes.txt") == "kept"  # no connect(): the read resumes it
        info = sbx.get_info()
        assert info.state == SandboxState.RUNNING
        assert_runs_at_least_the_minimum(info.end_at, resumed_from)

        assert sbx.pause() is True
        assert sbx.commands.run("cat notes.txt").stdout == "kept"
        assert sbx.pause() is True
        assert sbx.run_code("open('notes.txt').read()").text == "'kept'"
        assert E2bSandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
    finally:
        sbx.kill()


def test_e2b_calls_without_the_sandboxs_token_leave_it_paused(e2b_env: str) -> None:
    sbx = E2bSandbox.create(timeout=60, lifecycle=RESUMING)  # type: ignore[arg-type]
    try:
        assert sbx.pause() is True
        envd = {"E2b-Sandbox-Id": sbx.sandbox_id, "X-API-Key": TEST_API_KEY}
        with httpx.Client(base_url=f"{e2b_env}/e2b", timeout=30) as client:
            for token in ({}, {"X-Access-Token": "not-its-token"}):
                refused = client.get("/files", params={"path": "/home/user/x"}, headers={**envd, **token})
                assert refused.status_code in (401, 502), refused.text
        assert E2bSandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
    finally:
        sbx.kill()


def test_e2b_signed_file_urls_resume_it_and_bad_or_expired_ones_do_not(e2b_env: str) -> None:
    """A download or upload link is all a browser holds: its valid signature is work reaching the
    sandbox, whether the URL names it (by the sandbox header) or not (as the SDK builds them with
    E2B_SANDBOX_URL, where the signature must find it among the paused)."""
    sbx = E2bSandbox.create(timeout=60, lifecycle=RESUMING, secure=True)  # type: ignore[arg-type]
    try:
        sbx.files.write("notes.txt", "kept")
        assert sbx.pause() is True
        url = sbx.download_url("notes.txt", use_signature_expiration=60)
        expired = sbx.download_url("notes.txt", use_signature_expiration=-1)
        for refused in (url.replace("signature=v1_", "signature=v1_x"), expired):
            assert httpx.get(refused, timeout=30).status_code in (401, 502)
        wrong_operation = sbx.upload_url("notes.txt").replace("/files?", "/files?x=1&")
        assert httpx.get(wrong_operation, timeout=30).status_code in (401, 502)  # signed to write
        assert E2bSandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED

        got = httpx.get(url, timeout=30)
        assert (got.status_code, got.text) == (200, "kept")
        assert E2bSandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING

        assert sbx.pause() is True
        sent = httpx.post(sbx.upload_url("up.txt"), files={"file": ("up.txt", b"sent")}, timeout=30)
        assert sent.status_code == 200, sent.text
        assert sbx.files.read("up.txt") == "sent"

        assert sbx.pause() is True
        by_id = {"E2b-Sandbox-Id": sbx.sandbox_id}
        query = url.partition("?")[2]
        got = httpx.get(f"{e2b_env}/e2b/files?{query}", headers=by_id, timeout=30)
        assert (got.status_code, got.text) == (200, "kept")
    finally:
        sbx.kill()


def test_e2b_auto_resume_without_auto_pause_is_refused(e2b_env: str) -> None:
    with httpx.Client(base_url=f"{e2b_env}/e2b", headers=ADMIN, timeout=30) as client:
        refused = client.post("/sandboxes", json={"templateID": "base", "autoResume": {"enabled": True}})
    assert refused.status_code == 400
    assert "autoResume needs autoPause" in refused.json()["message"]


def test_native_commands_files_and_code_resume_it_and_its_timeout_does_not(server_url: str) -> None:
    with Sandbox.create(api_url=server_url, timeout_s=60, on_timeout="pause", auto_resume=True) as sbx:
        assert (sbx.info.on_timeout, sbx.info.auto_resume) == ("pause", True)
        sbx.files.write("/home/user/notes.txt", b"kept")
        assert sbx.pause().state == "paused"
        with pytest.raises(ConflictError, match="is paused; resume it first"):
            sbx.set_timeout(100)  # controls it, is no work in it
        assert sbx.get_info().state == "paused"

        resumed_from = datetime.now(UTC)
        assert sbx.commands.run("cat /home/user/notes.txt").stdout == "kept"
        info = sbx.get_info()
        assert info.state == "running"
        assert_runs_at_least_the_minimum(info.expires_at, resumed_from)
        sbx.pause()
        assert sbx.files.read("/home/user/notes.txt") == b"kept"
        sbx.pause()
        assert sbx.run_code("open('/home/user/notes.txt').read()").text == "'kept'"
        sbx.pause()
        with sbx.files.watch("/home/user") as changes:
            assert sbx.get_info().state == "running"
            sbx.files.write("/home/user/new.txt", b"x")
            assert next(iter(changes)).name == "new.txt"


def test_without_auto_resume_work_is_refused_while_paused(server_url: str) -> None:
    with Sandbox.create(api_url=server_url, timeout_s=60, on_timeout="pause") as sbx:
        assert sbx.info.auto_resume is False
        sbx.pause()
        with pytest.raises(ConflictError, match="is paused; resume it first"):
            sbx.commands.run("true")
        assert sbx.get_info().state == "paused"


def test_auto_resume_needs_on_timeout_pause(api: httpx.Client) -> None:
    refused = api.post("/v1/sandboxes", json={"auto_resume": True})
    assert refused.status_code == 400
    assert "auto_resume needs on_timeout 'pause'" in refused.json()["message"]


async def test_agentcell_mcp_tools_pause_and_resume_it(server_url: str) -> None:
    """Through agentcell's own MCP server: create one that resumes itself, pause it, a tool's work
    resumes it; resume_sandbox too; refusals come back as tool errors that say why."""
    async with Client(streamable(f"{server_url}/mcp")) as client:

        async def call(name: str, **arguments: Any) -> Any:
            result = await client.call_tool(name, arguments)
            assert not result.is_error, result
            return json.loads(result.content[0].text)  # type: ignore[union-attr]

        refused = await client.call_tool("create_sandbox", {"auto_resume": True})
        assert refused.is_error and "auto_resume needs on_timeout 'pause'" in str(refused.content)
        created = await call("create_sandbox", timeout_s=60, pause_at_timeout=True, auto_resume=True)
        sandbox_id = created["id"]
        assert (created["on_timeout"], created["auto_resume"]) == ("pause", True)
        try:
            await call("write_file", sandbox_id=sandbox_id, path="/home/user/notes.txt", text="kept")
            assert (await call("pause_sandbox", sandbox_id=sandbox_id))["state"] == "paused"
            listed = await call("list_sandboxes", paused=True)
            assert sandbox_id in {s["id"] for s in listed["sandboxes"]}
            assert sandbox_id not in {s["id"] for s in (await call("list_sandboxes"))["sandboxes"]}
            ran = await call("run_command", sandbox_id=sandbox_id, command="cat notes.txt")
            assert ran["stdout"] == "kept"  # the command resumed it
            running = await client.call_tool("resume_sandbox", {"sandbox_id": sandbox_id})
            assert running.is_error and "is running, not paused" in str(running.content)
            await call("pause_sandbox", sandbox_id=sandbox_id)
            resumed = await call("resume_sandbox", sandbox_id=sandbox_id, timeout_s=120)
            assert resumed["state"] == "running"
        finally:
            await client.call_tool("kill_sandbox", {"sandbox_id": sandbox_id})


@pytest.fixture
def host_routing(server_factory: ServerFactory) -> Iterator[ServerProcess]:
    """A server that routes `{port}-{id}.E2B_DOMAIN` hosts to sandboxes' ports (keys required)."""
    server = server_factory(env=PRIVATE_TRAFFIC_ENV)
    with sdk_pointed_at(server.url):
        yield server


def port_request(server: ServerProcess, sandbox_id: str, token: str | None = None) -> httpx.Response:
    headers = {"Host": f"8080-{sandbox_id}.{E2B_DOMAIN}"}
    if token is not None:
        headers[TRAFFIC_TOKEN_HEADER] = token
    return httpx.get(f"{server.url}/", headers=headers, timeout=60)


def state(server: ServerProcess, sandbox_id: str) -> str:
    found: str = httpx.get(f"{server.url}/v1/sandboxes/{sandbox_id}", headers=ADMIN).json()["state"]
    return found


def test_a_request_to_its_port_resumes_it_and_a_private_one_only_with_its_token(
    host_routing: ServerProcess, server_factory: ServerFactory
) -> None:
    public = E2bSandbox.create(timeout=60, lifecycle=RESUMING)  # type: ignore[arg-type]
    private = E2bSandbox.create(
        timeout=60,
        lifecycle=RESUMING,  # type: ignore[arg-type]
        network={"allow_public_traffic": False},
    )
    token = private.traffic_access_token
    assert token is not None
    public.pause()
    private.pause()
    # The resumed sandbox has no server on the port (a pause keeps files, not processes): 502.
    assert port_request(host_routing, public.sandbox_id).status_code == 502
    assert state(host_routing, public.sandbox_id) == "running"
    assert port_request(host_routing, private.sandbox_id).status_code == 403
    assert state(host_routing, private.sandbox_id) == "paused"

    host_routing.stop()  # after a restart only its paused record knows it is private
    again = server_factory(host_routing.state_dir, env=PRIVATE_TRAFFIC_ENV)
    assert port_request(again, private.sandbox_id).status_code == 403
    assert state(again, private.sandbox_id) == "paused"
    resumed = httpx.post(f"{again.url}/v1/sandboxes/{private.sandbox_id}/resume", headers=ADMIN)
    assert resumed.json()["traffic_token"] == token  # the node's key outlived the restart
    httpx.post(f"{again.url}/v1/sandboxes/{private.sandbox_id}/pause", headers=ADMIN).raise_for_status()
    assert port_request(again, private.sandbox_id, token).status_code == 502  # the old token wakes it
    assert state(again, private.sandbox_id) == "running"


def test_tokens_and_signed_urls_from_before_a_restart_still_wake_it(server_factory: ServerFactory) -> None:
    """A client's sandbox handle outlives a server restart: its envd access token and a signed URL
    it made keep working on the next server, and wake the sandbox paused meanwhile."""
    first = server_factory()
    with sdk_pointed_at(first.url):
        sbx = E2bSandbox.create(timeout=60, lifecycle=RESUMING, secure=True)  # type: ignore[arg-type]
        sbx.files.write("notes.txt", "kept")
        token, url = sbx._envd_access_token, sbx.download_url("notes.txt", use_signature_expiration=600)
        assert token is not None and sbx.pause() is True
    first.stop()
    again = server_factory(first.state_dir)
    envd = {"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": token}
    read = httpx.get(
        f"{again.url}/e2b/files", params={"path": "/home/user/notes.txt"}, headers=envd, timeout=60
    )
    assert (read.status_code, read.text) == (200, "kept")
    assert state(again, sbx.sandbox_id) == "running"
    httpx.post(f"{again.url}/v1/sandboxes/{sbx.sandbox_id}/pause", headers=ADMIN).raise_for_status()
    signed = httpx.get(
        f"{again.url}/e2b/files?{url.partition('?')[2]}", headers={"E2b-Sandbox-Id": sbx.sandbox_id}
    )
    assert (signed.status_code, signed.text) == (200, "kept")
    httpx.delete(f"{again.url}/v1/sandboxes/{sbx.sandbox_id}", headers=ADMIN)
