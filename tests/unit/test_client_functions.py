"""Functions and sessions in the SDK against a fake transport (no server): request shapes, the code
archive (what is packed, what is skipped) and the sync twin."""

from __future__ import annotations

import email.message
import email.parser
import io
import json
import os
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agentcell.client import (
    Agentcell,
    AsyncAgentcell,
    ConflictError,
    FunctionConfig,
    Hook,
    InvalidArgumentError,
    NotFoundError,
)
from agentcell.client.code_archive import SKIPPED_NAMES, pack_directory

NOW = "2025-01-01T00:00:00Z"
CONFIG = FunctionConfig(cmd="python3 app.py").model_dump(mode="json")
FUNCTION = {
    "name": "chat",
    "version": 3,
    "config": CONFIG,
    "created_at": NOW,
    "updated_at": NOW,
    "url_path": "/fn/chat/",
}
SESSION = {
    "id": "ses_1",
    "key": "alice-1",
    "function": "chat",
    "version": 3,
    "instance_id": "ins_1",
    "state": "idle",
    "created_at": NOW,
    "last_active_at": NOW,
    "expires_at": NOW,
    "idle_expires_at": NOW,
    "ttl_s": 3600,
    "idle_timeout_s": 900,
    "metadata": {},
}
NOT_FOUND = {"code": "not_found", "message": "gone", "request_id": "r"}
Handler = Callable[[httpx.Request], httpx.Response]


class FakeServer:
    """Routes `METHOD path` to canned answers and records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[str, Handler] = {
            "PUT /v1/functions/chat": lambda _: httpx.Response(200, json=FUNCTION),
            "GET /v1/functions/chat": lambda _: httpx.Response(200, json=FUNCTION),
            "GET /v1/functions": lambda _: httpx.Response(200, json={"functions": [FUNCTION]}),
            "DELETE /v1/functions/chat": lambda _: httpx.Response(204),
            "POST /v1/functions/chat/sessions": lambda _: httpx.Response(201, json=SESSION),
            "GET /v1/functions/chat/sessions": lambda _: httpx.Response(200, json={"sessions": [SESSION]}),
            "GET /v1/sessions": lambda _: httpx.Response(200, json={"sessions": [SESSION]}),
            "GET /v1/sessions/ses_1": lambda _: httpx.Response(200, json=SESSION),
            "PATCH /v1/sessions/ses_1": lambda _: httpx.Response(200, json=SESSION),
            "DELETE /v1/sessions/ses_1": lambda _: httpx.Response(204),
        }
        self.transport = httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        handler = self.routes.get(f"{request.method} {request.url.path}")
        return handler(request) if handler else httpx.Response(404, json=NOT_FOUND)

    def last(self, route: str) -> httpx.Request:
        return [r for r in self.requests if f"{r.method} {r.url.path}" == route][-1]

    def body(self, route: str) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(self.last(route).content)
        return loaded


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def code(tmp_path: Path) -> Path:
    """A function directory with things to skip at several depths, a symlink and a hard link."""
    root = tmp_path / "my-agent"
    (root / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "app.py").write_text("print('hi')\n")
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    (root / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    for skipped in (".git", "node_modules", ".venv", "pkg/node_modules"):
        (root / skipped).mkdir(parents=True)
        (root / skipped / "junk").write_text("junk")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "link").symlink_to("app.py")
    os.link(root / "pkg" / "mod.py", root / "pkg" / "same.py")
    return root


def multipart_parts(request: httpx.Request) -> dict[str, email.message.Message]:
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser().parsebytes(head + request.content)
    parts = message.get_payload()
    assert isinstance(parts, list)
    return {
        str(part.get_param("name", header="content-disposition")): part
        for part in parts
        if isinstance(part, email.message.Message)
    }


def deployed(server: FakeServer) -> tuple[dict[str, object], bytes]:
    """The config and the code archive of the last deploy."""
    request = server.last("PUT /v1/functions/chat")
    assert int(request.headers["content-length"]) == len(request.content)
    parts = multipart_parts(request)
    assert set(parts) == {"config", "code"}
    archive = parts["code"].get_payload(decode=True)
    assert isinstance(archive, bytes)
    return json.loads(str(parts["config"].get_payload())), archive


def members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
        return {member.name: member for member in tar.getmembers()}


async def test_deploy_sends_only_the_given_fields_and_the_packed_directory(
    server: FakeServer, code: Path
) -> None:
    """Unset options are left to the server's defaults; durations go as seconds; the reply is a
    FunctionInfo."""
    async with AsyncAgentcell(api_url="http://ac.test", transport=server.transport) as client:
        info = await client.functions.deploy(
            "chat",
            code,
            cmd="python3 app.py",
            env={"A": "1"},
            affinity="header",
            session_header="X-Chat-Session",
            sessions_per_instance=1,
            session_ttl_s=6 * 3600,
            idle_timeout_s=900,
            min_warm=2,
            initialize="pip list",
            pre_stop=Hook(cmd="./flush.sh", timeout_s=5),
            metadata={"team": "a"},
        )
    config, archive = deployed(server)
    assert config == {
        "cmd": "python3 app.py",
        "env": {"A": "1"},
        "affinity": {"kind": "header", "header": "x-chat-session"},
        "sessions_per_instance": 1,
        "session_ttl_s": 21600,
        "idle_timeout_s": 900,
        "min_warm": 2,
        "initialize": {"cmd": "pip list"},
        "pre_stop": {"cmd": "./flush.sh", "timeout_s": 5.0},
        "metadata": {"team": "a"},
    }
    assert (info.name, info.version, info.config.cmd) == ("chat", 3, "python3 app.py")
    assert archive[:2] == b"\x1f\x8b"  # gzip


async def test_directory_archive_skips_caches_and_keeps_links(server: FakeServer, code: Path) -> None:
    """.git, __pycache__, node_modules and .venv are left out at any depth; names are relative;
    a symlink stays a link, a hard link becomes a plain file; owners are root."""
    async with AsyncAgentcell(transport=server.transport) as client:
        await client.functions.deploy("chat", code, cmd="python3 app.py")
    found = members(deployed(server)[1])
    assert sorted(found) == ["app.py", "link", "pkg", "pkg/mod.py", "pkg/same.py", "run.sh"]
    assert found["link"].issym() and found["link"].linkname == "app.py"
    assert found["pkg/same.py"].isfile() and found["pkg/same.py"].size == len("X = 1\n")
    assert found["run.sh"].mode & 0o111 and found["pkg"].isdir()
    assert {(m.uid, m.gid, m.uname, m.gname) for m in found.values()} == {(0, 0, "", "")}
    assert {".git", "__pycache__", "node_modules", ".venv"} == SKIPPED_NAMES


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
async def test_a_tarball_is_uploaded_as_it_is(server: FakeServer, tmp_path: Path, suffix: str) -> None:
    """A .tar / .tar.gz path goes up byte for byte; progress counts the archive's bytes."""
    tarball = tmp_path / f"code{suffix}"
    with tarfile.open(tarball, "w:gz" if suffix.endswith("gz") else "w") as tar:
        tar.add(Path(__file__), arcname="app.py")
    sent: list[int] = []
    async with AsyncAgentcell(transport=server.transport) as client:
        await client.functions.deploy("chat", tarball, cmd="python3 app.py", on_progress=sent.append)
    assert deployed(server)[1] == tarball.read_bytes()
    assert sum(sent) == tarball.stat().st_size


async def test_progress_reports_packed_and_sent_bytes(server: FakeServer, code: Path) -> None:
    """on_pack_progress counts file bytes read, on_progress the archive bytes sent."""
    packed: list[int] = []
    sent: list[int] = []
    async with AsyncAgentcell(transport=server.transport) as client:
        await client.functions.deploy(
            "chat", str(code), cmd="x", on_pack_progress=packed.append, on_progress=sent.append
        )
    file_bytes = sum(len(p.read_bytes()) for p in [code / "app.py", code / "run.sh", code / "pkg/mod.py"])
    assert sum(packed) == file_bytes + len("X = 1\n")  # the hard link is packed as a second copy
    assert sum(sent) == len(deployed(server)[1])


async def test_deploy_refuses_bad_input_before_sending(server: FakeServer, tmp_path: Path) -> None:
    """Bad names, values the wire model refuses, mismatched affinity options and code that is no
    directory or tar raise before any request; a missing path is FileNotFoundError."""
    (tmp_path / "notes.txt").write_text("not a tar")
    async with AsyncAgentcell(transport=server.transport) as client:
        deploy = client.functions.deploy
        with pytest.raises(InvalidArgumentError, match="lowercase"):
            await deploy("Chat", tmp_path, cmd="x")
        with pytest.raises(InvalidArgumentError, match="sessions_per_instance"):
            await deploy("chat", tmp_path, cmd="x", sessions_per_instance=0)
        with pytest.raises(InvalidArgumentError, match="min_warm"):
            await deploy("chat", tmp_path, cmd="x", min_warm=5, max_instances=2)
        with pytest.raises(InvalidArgumentError, match="session_header"):
            await deploy("chat", tmp_path, cmd="x", affinity="cookie", session_header="x-s")
        with pytest.raises(InvalidArgumentError, match="cookie_name"):
            await deploy("chat", tmp_path, cmd="x", cookie_name="sid")
        with pytest.raises(InvalidArgumentError, match="neither"):
            await deploy("chat", tmp_path / "notes.txt", cmd="x")
        with pytest.raises(FileNotFoundError):
            await deploy("chat", tmp_path / "missing", cmd="x")
    assert server.requests == []


async def test_cookie_affinity_and_deploy_config(server: FakeServer, code: Path) -> None:
    """A cookie name goes with cookie affinity; deploy_config sends a whole config as it is."""
    async with AsyncAgentcell(transport=server.transport) as client:
        await client.functions.deploy("chat", code, cmd="x", affinity="cookie", cookie_name="sid")
        assert deployed(server)[0]["affinity"] == {"kind": "cookie", "cookie": "sid"}
        live = await client.functions.get("chat")
        await client.functions.deploy_config("chat", code, live.config)
    assert deployed(server)[0] == CONFIG


async def test_get_list_delete_and_url(server: FakeServer) -> None:
    """get/list return FunctionInfo; delete is False for a function that is not there; url is the
    gateway's, made without a request."""
    async with AsyncAgentcell(api_url="http://ac.test:8700/", transport=server.transport) as client:
        assert client.functions.url("chat") == "http://ac.test:8700/fn/chat/"
        assert (await client.functions.get("chat")).version == 3
        assert [f.name for f in await client.functions.list()] == ["chat"]
        assert await client.functions.delete("chat") is True
        assert await client.functions.delete("other") is False
        with pytest.raises(NotFoundError):
            await client.functions.get("other")


async def test_session_requests(server: FakeServer) -> None:
    """create sends only what is given; list picks the function's route or /v1/sessions with
    filters; renew is a PATCH of the given limits; delete is False once gone."""
    async with AsyncAgentcell(transport=server.transport) as client:
        sessions = client.sessions
        created = await sessions.create("chat", "alice-1", ttl_s=3600, metadata={"u": "a"})
        assert server.body("POST /v1/functions/chat/sessions") == {
            "key": "alice-1",
            "ttl_s": 3600,
            "metadata": {"u": "a"},
        }
        await sessions.create("chat")
        assert server.body("POST /v1/functions/chat/sessions") == {}
        assert (created.id, created.key, created.instance_id) == ("ses_1", "alice-1", "ins_1")
        await sessions.list("chat", state="idle", metadata={"u": "a", "v": "b"})
        params = server.last("GET /v1/functions/chat/sessions").url.params
        assert (params["state"], params.get_list("metadata")) == ("idle", ["u=a", "v=b"])
        assert [s.id for s in await sessions.list()] == ["ses_1"]
        assert not server.last("GET /v1/sessions").url.params
        await sessions.renew("ses_1", idle_timeout_s=7200)
        assert server.body("PATCH /v1/sessions/ses_1") == {"idle_timeout_s": 7200}
        assert (await sessions.get("ses_1")).state == "idle"
        assert await sessions.delete("ses_1") is True
        assert await sessions.delete("ses_gone") is False


async def test_session_refusals(server: FakeServer) -> None:
    """renew with nothing to change and out-of-range limits are refused locally; a live key is the
    server's ConflictError."""
    server.routes["POST /v1/functions/chat/sessions"] = lambda _: httpx.Response(
        409, json={"code": "conflict", "message": "key 'k' is live", "request_id": "r"}
    )
    async with AsyncAgentcell(transport=server.transport) as client:
        with pytest.raises(InvalidArgumentError, match="renew needs"):
            await client.sessions.renew("ses_1")
        with pytest.raises(InvalidArgumentError, match="ttl_s"):
            await client.sessions.create("chat", ttl_s=0)
        with pytest.raises(InvalidArgumentError, match="key"):
            await client.sessions.create("chat", key="bad key!")
        assert server.requests == []
        with pytest.raises(ConflictError, match="is live"):
            await client.sessions.create("chat", key="k")


def test_sync_twin_shares_the_core_and_cleans_up(server: FakeServer, code: Path) -> None:
    """`with Agentcell()` drives the same requests on one private loop thread, gone after close."""
    before = threading.active_count()
    with Agentcell(api_url="http://ac.test", transport=server.transport) as client:
        assert threading.active_count() == before + 1
        info = client.functions.deploy("chat", code, cmd="python3 app.py", min_warm=1)
        session = client.sessions.create("chat", "alice-1")
        renewed = client.sessions.renew(session.id, ttl_s=60)
        assert [s.id for s in client.sessions.list("chat")] == [session.id]
        assert client.functions.url("chat") == "http://ac.test/fn/chat/"
        assert client.sessions.delete(session.id) and client.functions.delete("chat")
    assert (info.version, renewed.id) == (3, "ses_1")
    assert deployed(server)[0] == {"cmd": "python3 app.py", "min_warm": 1}
    assert threading.active_count() == before
    client.close()  # idempotent


def test_pack_directory_writes_a_readable_gzip_tar(code: Path) -> None:
    """The packer alone: the archive lists the kept entries, parents before children."""
    out = io.BytesIO()
    pack_directory(code, out)
    names = list(members(out.getvalue()))
    assert names.index("pkg") < names.index("pkg/mod.py")
    assert not any(part in SKIPPED_NAMES for name in names for part in name.split("/"))
