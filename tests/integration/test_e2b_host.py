"""E2B's host form, `{port}-{sandboxId}.{domain}`, through agentcell's gateway (AGENTCELL_E2B_DOMAIN):
`get_host(port)` reaches a server listening inside the sandbox, and envd answers on its own host."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from e2b import Sandbox

from tests.conftest import AUTH, TEST_API_KEY, ServerProcess

DOMAIN = "sbx.agentcell.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("e2b-host") / "state", env={"AGENTCELL_E2B_DOMAIN": DOMAIN}
    )
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def sbx(server: ServerProcess) -> Iterator[Sandbox]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("E2B_API_KEY", TEST_API_KEY)
        patch.setenv("E2B_API_URL", f"{server.url}/e2b")
        patch.setenv("E2B_SANDBOX_URL", f"{server.url}/e2b")
        patch.setenv("E2B_DOMAIN", DOMAIN)
        sandbox = Sandbox.create(timeout=120)
        yield sandbox
        sandbox.kill()


def wait_for_port(client: httpx.Client, host: str) -> httpx.Response:
    deadline = time.monotonic() + 15
    while True:
        reply = client.get("/", headers={"Host": host})
        if reply.status_code == 200 or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)


def test_get_host_reaches_a_server_in_the_sandbox(sbx: Sandbox, server: ServerProcess) -> None:
    sbx.files.write("site/index.html", "hello from inside")
    sbx.commands.run("cd site && exec python3 -m http.server 8080", background=True, timeout=0)
    host = sbx.get_host(8080)
    assert host == f"8080-{sbx.sandbox_id}.{DOMAIN}"
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=10) as client:
        reply = wait_for_port(client, host)
        assert (reply.status_code, reply.text) == (200, "hello from inside")
        closed = client.get("/", headers={"Host": sbx.get_host(9)})
        assert closed.status_code == 502
        gone = client.get("/", headers={"Host": f"8080-sbx_0123456789abcdef.{DOMAIN}"})
        assert gone.status_code == 502 and "was not found" in gone.json()["message"]


def test_envd_answers_on_its_own_host(sbx: Sandbox, server: ServerProcess) -> None:
    token = sbx._envd_access_token
    assert token is not None
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=10) as client:
        host = {"Host": sbx.get_host(49983)}
        assert client.get("/health", headers=host).status_code == 204
        stat = client.post(
            "/filesystem.Filesystem/Stat",
            json={"path": "/home/user"},
            headers={**host, "X-Access-Token": token},
        )
        assert stat.json()["entry"]["type"] == "FILE_TYPE_DIRECTORY"
        contexts = client.get("/contexts", headers={"Host": sbx.get_host(49999), "X-Access-Token": token})
        assert {c["language"] for c in contexts.json()} >= {"python", "javascript"}
