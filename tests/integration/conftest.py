"""Integration fixtures: an HTTP client on the shared real server, and deployable test functions."""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2b import Sandbox, SandboxNetworkOpts

from tests.conftest import AUTH, TEST_API_KEY, ServerProcess

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def code_archive(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buffer.getvalue()


def deploy(
    api: httpx.Client, name: str, config: Mapping[str, object], code: Path = FIXTURES / "echo_fn"
) -> httpx.Response:
    files: dict[str, tuple[str | None, str | bytes]] = {
        "config": (None, json.dumps(config)),
        "code": ("code.tar.gz", code_archive(code)),
    }
    return api.put(f"/v1/functions/{name}", files=files)


@pytest.fixture
def api(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=60, headers=AUTH) as client:
        yield client


@pytest.fixture
def fn_name(api: httpx.Client) -> Iterator[str]:
    """A name no function has yet (its function, if a test deploys one, is deleted afterwards)."""
    name = "fn-" + uuid.uuid4().hex[:8]
    yield name
    api.delete(f"/v1/functions/{name}")


@pytest.fixture
def rest_sandbox(api: httpx.Client) -> Iterator[str]:
    """A sandbox made through the REST API for one test (its id), killed afterwards."""
    reply = api.post("/v1/sandboxes", json={"timeout_s": 120})
    assert reply.status_code == 201, reply.text
    sid: str = reply.json()["id"]
    try:
        yield sid
    finally:
        api.delete(f"/v1/sandboxes/{sid}")


@contextlib.contextmanager
def e2b_variables(url: str, api_key: str = TEST_API_KEY) -> Iterator[str]:
    """The variables an E2B user sets (docs/e2b.md); E2B_CONNECTION_RETRIES=0 makes failures fast."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("E2B_API_KEY", api_key)
        patch.setenv("E2B_API_URL", f"{url}/e2b")
        patch.setenv("E2B_SANDBOX_URL", f"{url}/e2b")
        patch.setenv("E2B_CONNECTION_RETRIES", "0")
        yield url


@pytest.fixture(scope="module")
def e2b_env(shared_server: ServerProcess) -> Iterator[str]:
    """The E2B SDKs pointed at the shared server, for one test module."""
    with e2b_variables(shared_server.url) as url:
        yield url


@pytest.fixture
def make_sandbox(e2b_env: str) -> Iterator[Callable[..., Sandbox]]:
    """E2B sandboxes for tests that end, pause or time them out (60 s unless given); all killed
    afterwards."""
    made: list[Sandbox] = []

    def make(**options: Any) -> Sandbox:
        options.setdefault("timeout", 60)
        made.append(Sandbox.create(**options))
        return made[-1]

    yield make
    for sandbox in made:
        sandbox.kill()


E2B_DOMAIN = "sbx.agentcell.test"
PRIVATE_TRAFFIC_ENV = {"AGENTCELL_E2B_DOMAIN": E2B_DOMAIN, "AGENTCELL_AUTH": "keys"}
"""a server whose sandboxes' ports are reached on `{port}-{id}.E2B_DOMAIN`; the admin key: TEST_API_KEY"""
TRAFFIC_TOKEN_HEADER = "e2b-traffic-access-token"
PRIVATE: SandboxNetworkOpts = {"allow_public_traffic": False}


@contextlib.contextmanager
def sdk_pointed_at(url: str) -> Iterator[None]:
    """The E2B variables (docs/e2b.md) for one server, with the domain `get_host` builds on."""
    with e2b_variables(url), pytest.MonkeyPatch.context() as patch:
        patch.setenv("E2B_DOMAIN", E2B_DOMAIN)
        yield


@pytest.fixture(scope="session")
def private_traffic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list[str]]]:
    """A PRIVATE_TRAFFIC_ENV server started on the state of one that paused two private sandboxes
    through E2B (their ids come along: one for each module whose test resumes one after a
    restart), so that those modules share two server starts."""
    state = tmp_path_factory.mktemp("private-traffic") / "state"
    first = ServerProcess(state, env=PRIVATE_TRAFFIC_ENV)
    paused: list[str] = []
    try:
        with sdk_pointed_at(first.url):
            for _ in range(2):
                sandbox = Sandbox.create(timeout=60, network=PRIVATE)
                sandbox.pause()
                paused.append(sandbox.sandbox_id)
    finally:
        code = first.stop()
    assert code == 0, first.log()
    server = ServerProcess(state, env=PRIVATE_TRAFFIC_ENV)
    yield server, paused
    assert server.stop() == 0, server.log()
