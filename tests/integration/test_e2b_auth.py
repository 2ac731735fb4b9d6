"""The E2B SDKs against a server with API keys (AGENTCELL_AUTH=keys): E2B_API_KEY is an agentcell
key; in-sandbox calls carry no key and are authorized by the sandbox's own access token."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from e2b import AuthenticationException
from e2b_code_interpreter import Sandbox

from tests.conftest import ServerProcess
from tests.integration.conftest import e2b_variables


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("e2b-auth") / "state", env={"AGENTCELL_AUTH": "keys"})
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def e2b_env(server: ServerProcess) -> Iterator[str]:
    with e2b_variables(server.url, (server.state_dir / "admin.key").read_text().strip()) as url:
        yield url


def test_a_real_key_works_end_to_end(e2b_env: str) -> None:
    sandbox = Sandbox.create(timeout=60)
    try:
        assert sandbox.commands.run("echo keyed").stdout == "keyed\n"
        sandbox.files.write("k.txt", "v")
        assert sandbox.files.read("k.txt") == "v"
        assert sandbox.run_code("6 * 7").text == "42"
        assert {c.language for c in sandbox.list_code_contexts()} >= {"python", "javascript"}
    finally:
        sandbox.kill()


def test_a_wrong_key_and_a_missing_token_are_refused(e2b_env: str) -> None:
    with pytest.raises(AuthenticationException):
        Sandbox.create(timeout=60, api_key="not-a-key")
    sandbox = Sandbox.create(timeout=60)
    try:
        headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49999"}
        assert httpx.get(f"{e2b_env}/e2b/contexts", headers=headers).status_code == 401
        stat = httpx.post(
            f"{e2b_env}/e2b/filesystem.Filesystem/Stat",
            json={"path": "/"},
            headers={"E2b-Sandbox-Id": sandbox.sandbox_id},
        )
        assert stat.status_code == 401
    finally:
        sandbox.kill()


def test_a_tenant_key_sees_its_own_sandboxes_only(e2b_env: str, server: ServerProcess) -> None:
    """A second tenant's key drives its sandbox end to end (in-sandbox calls included) and does not
    see the admin's; the admin's sandbox is not found under the tenant's key."""
    from e2b import SandboxNotFoundException

    admin = {"X-API-Key": (server.state_dir / "admin.key").read_text().strip()}
    assert httpx.post(f"{server.url}/v1/tenants", json={"name": "acme"}, headers=admin).status_code == 201
    created = httpx.post(f"{server.url}/v1/tenants/acme/keys", json={"scopes": ["*"]}, headers=admin)
    tenant_key = created.json()["key"]
    mine = Sandbox.create(timeout=60, api_key=tenant_key)
    other = Sandbox.create(timeout=60)
    try:
        assert mine.commands.run("echo acme").stdout == "acme\n"
        assert mine.run_code("1 + 1").text == "2"
        listed = [s.sandbox_id for s in Sandbox.list(api_key=tenant_key).next_items()]
        assert listed == [mine.sandbox_id]
        with pytest.raises(SandboxNotFoundException):
            Sandbox.connect(other.sandbox_id, api_key=tenant_key)
    finally:
        mine.kill()
        other.kill()
