"""Functions and sessions through the Python SDK against a real server (`server_url`) and real
instances of tests/fixtures/echo_fn, checked through the gateway."""

from __future__ import annotations

import os
import shutil
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentcell.client import Agentcell, AsyncAgentcell, InvalidArgumentError, NotFoundError
from tests.conftest import AUTH

ECHO_FN = Path(__file__).resolve().parent.parent / "fixtures" / "echo_fn"
SESSION_HEADER = "x-agentcell-session-id"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def client(server_url: str) -> AsyncIterator[AsyncAgentcell]:
    async with AsyncAgentcell(api_url=server_url) as client:
        yield client


@pytest.fixture
async def new_name(client: AsyncAgentcell) -> AsyncIterator[Callable[[str], str]]:
    """Unique function names; the functions deployed under them are deleted afterwards."""
    names: list[str] = []

    def make(prefix: str) -> str:
        names.append(unique(prefix))
        return names[-1]

    yield make
    for name in names:
        await client.functions.delete(name)


async def whoami(client: AsyncAgentcell, fn: str, key: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60, headers=AUTH) as http:
        reply = await http.get(client.functions.url(fn) + "whoami", headers={SESSION_HEADER: key})
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


async def test_deploy_a_directory_and_route_by_key(
    client: AsyncAgentcell, new_name: Callable[[str], str]
) -> None:
    """A deployed directory serves through the gateway: one key always reaches one instance, whose
    memory persists; another key reaches another instance."""
    name = new_name("sdk")
    info = await client.functions.deploy(
        name, ECHO_FN, cmd="python3 app.py", affinity="header", sessions_per_instance=1, idle_timeout_s=600
    )
    assert (info.name, info.version, info.url_path) == (name, 1, f"/fn/{name}/")
    first = await whoami(client, name, "alice-1")
    again = await whoami(client, name, "alice-1")
    bob = await whoami(client, name, "bob-7")
    assert first["instance"] == again["instance"] and again["count"] == first["count"] + 1
    assert bob["instance"] != first["instance"]


async def test_a_pre_created_session_is_the_instance_its_key_reaches(
    client: AsyncAgentcell, new_name: Callable[[str], str]
) -> None:
    """sessions.create binds an instance before any request; the key's requests land there; renew
    keeps it; delete ends it with reason `deleted`; list filters by function and metadata."""
    name = new_name("sdk")
    await client.functions.deploy(name, ECHO_FN, cmd="python3 app.py", idle_timeout_s=600)
    session = await client.sessions.create(name, "pre-1", ttl_s=3600, metadata={"run": name})
    assert session.state == "idle" and session.instance_id and session.key == "pre-1"
    assert (await whoami(client, name, "pre-1"))["instance"] == session.instance_id
    listed = await client.sessions.list(name, metadata={"run": name})
    assert [s.id for s in listed] == [session.id]
    assert session.id in [s.id for s in await client.sessions.list(metadata={"run": name})]
    renewed = await client.sessions.renew(session.id, idle_timeout_s=7200)
    assert (renewed.idle_timeout_s, renewed.instance_id) == (7200, session.instance_id)
    assert await client.sessions.delete(session.id) is True
    ended = await client.sessions.get(session.id)
    assert (ended.state, ended.end_reason) == ("ended", "deleted")
    assert await client.sessions.delete(session.id) is False


async def test_redeploy_keeps_bound_sessions_on_their_version(
    client: AsyncAgentcell, new_name: Callable[[str], str]
) -> None:
    """deploy_config with the live config makes version 2; a session bound on version 1 stays."""
    name = new_name("sdk")
    live = await client.functions.deploy(name, ECHO_FN, cmd="python3 app.py", idle_timeout_s=600)
    before = await whoami(client, name, "stay-1")
    assert (await client.functions.deploy_config(name, ECHO_FN, live.config)).version == 2
    after = await whoami(client, name, "stay-1")
    assert (after["instance"], after["version"]) == (before["instance"], "1")
    assert (await whoami(client, name, "new-1"))["version"] == "2"


async def test_skipped_directories_never_reach_the_instance(
    client: AsyncAgentcell, new_name: Callable[[str], str], tmp_path: Path
) -> None:
    """.git and __pycache__ are left out: the command checks /code before serving."""
    code = tmp_path / "code"
    shutil.copytree(ECHO_FN, code)
    for skipped in (".git", "__pycache__", "node_modules/x", ".venv"):
        (code / skipped).mkdir(parents=True)
        (code / skipped / "file").write_text("x")
    name = new_name("sdk")
    cmd = "test ! -e .git && test ! -e __pycache__ && test ! -e node_modules && exec python3 app.py"
    await client.functions.deploy(name, code, cmd=cmd, ready_timeout_s=10)
    assert (await whoami(client, name, "k"))["count"] == 1


async def test_code_larger_than_a_json_body(
    client: AsyncAgentcell, new_name: Callable[[str], str], tmp_path: Path
) -> None:
    """A 40 MiB archive (above the 32 MiB JSON body limit) deploys: the deploy route bounds its own
    upload."""
    code = tmp_path / "code"
    shutil.copytree(ECHO_FN, code)
    (code / "blob.bin").write_bytes(os.urandom(40 << 20))  # incompressible
    name = new_name("big")
    sent: list[int] = []
    info = await client.functions.deploy(name, code, cmd="python3 app.py", on_progress=sent.append)
    assert info.version == 1 and sum(sent) > 32 << 20


async def test_errors_name_the_problem(client: AsyncAgentcell, new_name: Callable[[str], str]) -> None:
    """An unknown function is NotFoundError; a key on an affinity-less function the server refuses."""
    with pytest.raises(NotFoundError, match="not found"):
        await client.functions.get(unique("none"))
    with pytest.raises(NotFoundError):
        await client.sessions.create(unique("none"))
    name = new_name("sdk")
    await client.functions.deploy(name, ECHO_FN, cmd="python3 app.py", affinity="none")
    with pytest.raises(InvalidArgumentError, match="affinity 'none'"):
        await client.sessions.create(name)
    with pytest.raises(InvalidArgumentError, match="stdio_process applies to a stdio MCP server"):
        await client.functions.deploy(name, ECHO_FN, cmd="python3 app.py", stdio_process="shared")


async def test_a_stdio_mcp_server_with_a_shared_process(
    client: AsyncAgentcell, new_name: Callable[[str], str]
) -> None:
    name = new_name("mcp")
    info = await client.functions.deploy(
        name, ECHO_FN.parent / "mcp_stdio", stdio="python3 server.py", stdio_process="shared", affinity="mcp"
    )
    assert (info.config.stdio, info.config.stdio_process, info.config.cmd) == (
        "python3 server.py",
        "shared",
        None,
    )


@pytest.fixture
def tarball(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "echo.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(ECHO_FN / "app.py", arcname="app.py")
    yield path


def test_sync_client_deploys_a_tarball(server_url: str, tarball: Path) -> None:
    """The sync twin: deploy a .tar.gz as it is, find it in get/list, delete it once."""
    name = unique("sync")
    with Agentcell(api_url=server_url) as client:
        try:
            info = client.functions.deploy(name, tarball, cmd="python3 app.py", min_warm=1)
            assert info.config.min_warm == 1 and client.functions.get(name).version == 1
            assert name in [f.name for f in client.functions.list()]
            reply = httpx.get(
                client.functions.url(name) + "whoami", headers={SESSION_HEADER: "s", **AUTH}, timeout=60
            )
            session = client.sessions.list(name)[0]
            assert reply.json()["instance"] == session.instance_id and session.key == "s"
        finally:
            assert client.functions.delete(name) is True
        assert client.functions.delete(name) is False
