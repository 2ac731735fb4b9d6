"""Private ports on agentcell's own API: a sandbox created with `"ports": "private"` answers on its
`{port}-{id}.{domain}` hosts only requests carrying its `traffic_token` in the
`e2b-traffic-access-token` header (403 otherwise), the token going to keys that may write to it and
never to read-only keys; and a private sandbox paused through E2B comes back private when resumed
through agentcell's API after a server restart (the resume hook of SandboxPauses, whoever resumes).

The check is the gateway's (server/gateway/e2b.py `refusal`), with PrivateTraffic
(server/scheduler/traffic.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from e2b import Sandbox as E2bSandbox

from agentcell.client import Sandbox
from tests.conftest import TEST_API_KEY, ServerProcess
from tests.integration.conftest import E2B_DOMAIN as DOMAIN
from tests.integration.conftest import TRAFFIC_TOKEN_HEADER as TOKEN_HEADER
from tests.integration.conftest import sdk_pointed_at

AGENTCELL = str(Path(sys.executable).parent / "agentcell")
ADMIN = {"X-API-Key": TEST_API_KEY}


@pytest.fixture(scope="module")
def restarted(private_traffic: tuple[ServerProcess, list[str]]) -> tuple[ServerProcess, str]:
    """The server, and a private sandbox paused through E2B that it found when it started."""
    server, paused = private_traffic
    return server, paused[1]


@pytest.fixture(scope="module")
def server(restarted: tuple[ServerProcess, str]) -> ServerProcess:
    return restarted[0]


@pytest.fixture
def gateway(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def serve(sandbox: Sandbox, text: str) -> None:
    """An HTTP server on port 8080 inside the sandbox, answering `text`, listening once this returns."""
    sandbox.files.write("/home/user/site/index.html", text)
    sandbox.commands.run("cd site && exec python3 -m http.server 8080", background=True)
    probe = "import socket; socket.create_connection(('127.0.0.1', 8080)).close()"
    sandbox.commands.run(f'until python3 -c "{probe}" 2>/dev/null; do sleep 0.05; done', timeout_s=60)


def get(client: httpx.Client, sandbox_id: str, token: str | None = None) -> httpx.Response:
    headers = {"Host": f"8080-{sandbox_id}.{DOMAIN}"}
    if token is not None:
        headers[TOKEN_HEADER] = token
    return client.get("/", headers=headers)


def read_only_key(gateway: httpx.Client) -> str:
    reply = gateway.post("/v1/tenants/default/keys", json={"scopes": ["sandboxes:read"]}, headers=ADMIN)
    assert reply.status_code == 201, reply.text
    key: str = reply.json()["key"]
    return key


def test_a_private_sandbox_answers_only_with_its_token(server: ServerProcess, gateway: httpx.Client) -> None:
    """The token is in the create answer; a request without it or with another is refused."""
    with Sandbox.create(ports="private", api_url=server.url, api_key=TEST_API_KEY) as sandbox:
        token = sandbox.info.traffic_token
        assert sandbox.info.ports == "private" and token is not None
        serve(sandbox, "private")
        reply = get(gateway, sandbox.id, token)
        assert (reply.status_code, reply.text) == (200, "private")
        for wrong in (None, "not-the-token"):
            refused = get(gateway, sandbox.id, wrong)
            assert refused.status_code == 403, refused.text
            assert refused.json()["sandboxId"] == sandbox.id


def test_a_sandbox_is_public_by_default(server: ServerProcess, gateway: httpx.Client) -> None:
    with Sandbox.create(api_url=server.url, api_key=TEST_API_KEY) as sandbox:
        assert (sandbox.info.ports, sandbox.info.traffic_token) == ("public", None)
        serve(sandbox, "public")
        reply = get(gateway, sandbox.id)
        assert (reply.status_code, reply.text) == (200, "public")


def test_the_token_goes_to_writers_only(server: ServerProcess, gateway: httpx.Client) -> None:
    """GET shows a private sandbox's token to a key that may write to it, never to a read-only
    key; lists show none."""
    with Sandbox.create(ports="private", api_url=server.url, api_key=TEST_API_KEY) as sandbox:
        path = f"/v1/sandboxes/{sandbox.id}"
        assert gateway.get(path, headers=ADMIN).json()["traffic_token"] == sandbox.info.traffic_token
        reader = gateway.get(path, headers={"X-API-Key": read_only_key(gateway)})
        assert reader.status_code == 200, reader.text
        assert (reader.json()["ports"], reader.json()["traffic_token"]) == ("private", None)
        listed = gateway.get("/v1/sandboxes", headers=ADMIN).json()["sandboxes"]
        mine = next(s for s in listed if s["id"] == sandbox.id)
        assert (mine["ports"], mine["traffic_token"]) == ("private", None)


def test_an_unknown_ports_value_is_a_400(gateway: httpx.Client) -> None:
    reply = gateway.post("/v1/sandboxes", json={"ports": "secret"}, headers=ADMIN)
    assert reply.status_code == 400, reply.text
    assert "ports" in reply.json()["message"] and "private" in reply.json()["message"]


def test_a_private_sandbox_stays_private_across_a_native_pause_and_resume(
    server: ServerProcess, gateway: httpx.Client
) -> None:
    created = Sandbox.create(ports="private", api_url=server.url, api_key=TEST_API_KEY)
    try:
        created.pause()
        with Sandbox.resume(created.id, api_url=server.url, api_key=TEST_API_KEY) as resumed:
            serve(resumed, "resumed")
            assert get(gateway, resumed.id).status_code == 403
            reply = get(gateway, resumed.id, resumed.info.traffic_token)
            assert (reply.status_code, reply.text) == (200, "resumed")
    finally:
        created.close()


def test_an_e2b_private_sandbox_resumed_natively_after_a_restart_stays_private(
    restarted: tuple[ServerProcess, str], gateway: httpx.Client
) -> None:
    """Paused through E2B before the server restarted, resumed through agentcell's API: only its
    paused record knew it was private."""
    server, sandbox_id = restarted
    with Sandbox.resume(sandbox_id, api_url=server.url, api_key=TEST_API_KEY) as resumed:
        token = resumed.info.traffic_token
        assert resumed.info.ports == "private" and token is not None
        serve(resumed, "restarted")
        refused = get(gateway, sandbox_id)
        assert refused.status_code == 403, refused.text
        reply = get(gateway, sandbox_id, token)
        assert (reply.status_code, reply.text) == (200, "restarted")
        with sdk_pointed_at(server.url):  # and E2B sees it private too
            network = E2bSandbox.get_info(sandbox_id).network
            assert network is not None and network.get("allow_public_traffic") is False


def test_the_cli_creates_a_private_sandbox(server: ServerProcess, gateway: httpx.Client) -> None:
    """`sandbox create --ports private`: the id alone on stdout, the token on stderr."""
    done = subprocess.run(
        [AGENTCELL, "--url", server.url, "sandbox", "create", "--ports", "private"],
        text=True, capture_output=True, timeout=90, stdin=subprocess.DEVNULL,
        env={**os.environ, "AGENTCELL_API_KEY": TEST_API_KEY},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sandbox_id = done.stdout.strip()
    try:
        token = done.stderr.strip().removeprefix("traffic token: ")
        described = gateway.get(f"/v1/sandboxes/{sandbox_id}", headers=ADMIN).json()
        assert (described["ports"], described["traffic_token"]) == ("private", token)
    finally:
        gateway.delete(f"/v1/sandboxes/{sandbox_id}", headers=ADMIN)
