"""E2B's `network={"allow_public_traffic": False}`: a server listening in the sandbox is reached
through `get_host(port)` only by requests carrying the sandbox's traffic access token in the
`e2b-traffic-access-token` header (403 without it or with a wrong one, as on E2B); envd's own host
stays open to the SDK; a sandbox created without the flag is reachable by anyone (with API keys
on, as here: `get_host` traffic carries none); the setting survives a pause and a resume by
`connect`, across a server restart too, and another tenant's sandboxes do not disturb it.

The check is the gateway's (server/gateway/e2b.py `refusal`), on the `{port}-{id}.{domain}` host.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from e2b import Sandbox

from tests.conftest import TEST_API_KEY, ServerProcess
from tests.integration.conftest import PRIVATE, sdk_pointed_at
from tests.integration.conftest import TRAFFIC_TOKEN_HEADER as TOKEN_HEADER


@pytest.fixture(scope="module")
def restarted(private_traffic: tuple[ServerProcess, list[str]]) -> tuple[ServerProcess, str]:
    """The server, and a private sandbox it found paused when it started."""
    server, paused = private_traffic
    return server, paused[0]


@pytest.fixture(scope="module")
def server(restarted: tuple[ServerProcess, str]) -> ServerProcess:
    return restarted[0]


@pytest.fixture(scope="module")
def private(server: ServerProcess) -> Iterator[Sandbox]:
    with sdk_pointed_at(server.url):
        sandbox = Sandbox.create(timeout=120, network=PRIVATE)
        serve(sandbox, "private")
        yield sandbox
        sandbox.kill()


@pytest.fixture(scope="module")
def public(server: ServerProcess) -> Iterator[Sandbox]:
    with sdk_pointed_at(server.url):
        sandbox = Sandbox.create(timeout=120)
        serve(sandbox, "public")
        yield sandbox
        sandbox.kill()


@pytest.fixture
def gateway(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def serve(sandbox: Sandbox, text: str) -> None:
    """An HTTP server on port 8080 inside the sandbox, answering `text`, listening once this returns."""
    sandbox.files.write("site/index.html", text)
    sandbox.commands.run("cd site && exec python3 -m http.server 8080", background=True, timeout=0)
    probe = "import socket; socket.create_connection(('127.0.0.1', 8080)).close()"
    sandbox.commands.run(f'until python3 -c "{probe}" 2>/dev/null; do sleep 0.05; done', timeout=60)


def get(client: httpx.Client, sandbox: Sandbox, token: str | None = None, port: int = 8080) -> httpx.Response:
    headers = {"Host": sandbox.get_host(port)}
    if token is not None:
        headers[TOKEN_HEADER] = token
    return client.get("/", headers=headers)


def assert_refused(reply: httpx.Response, sandbox: Sandbox, problem: str) -> None:
    assert reply.status_code == 403, reply.text
    body = reply.json()
    assert (body["code"], body["sandboxId"]) == (403, sandbox.sandbox_id)
    assert TOKEN_HEADER in body["message"] and problem in body["message"]
    assert "trafficAccessToken" in body["message"]  # what to send


def test_a_private_sandbox_port_answers_only_with_its_token(
    private: Sandbox, public: Sandbox, gateway: httpx.Client
) -> None:
    token = private.traffic_access_token
    assert token is not None
    reply = get(gateway, private, token)
    assert (reply.status_code, reply.text) == (200, "private")
    assert_refused(get(gateway, private), private, "is missing")
    assert_refused(get(gateway, private, "not-the-token"), private, "is invalid")
    assert_refused(get(gateway, private, public.traffic_access_token), private, "is invalid")
    assert_refused(get(gateway, private, token.upper()), private, "is invalid")
    # a refused request's body is read off the connection: the next request on it is answered
    refused = gateway.post("/", headers={"Host": private.get_host(8080)}, content=b"x" * 100_000)
    assert_refused(refused, private, "is missing")
    assert get(gateway, private, token).status_code == 200
    assert get(gateway, private, token, port=9).status_code == 502  # closed: the token let it through


def test_envd_and_the_sdk_need_no_traffic_token(private: Sandbox, gateway: httpx.Client) -> None:
    """envd (49983) is not behind the traffic token on E2B either: it takes its own access token."""
    assert gateway.get("/health", headers={"Host": private.get_host(49983)}).status_code == 204
    assert private.commands.run("echo ok").stdout == "ok\n"
    info = private.get_info()
    assert info.network is not None and info.network.get("allow_public_traffic") is False


def test_a_sandbox_created_without_the_flag_is_public(public: Sandbox, gateway: httpx.Client) -> None:
    reply = get(gateway, public)
    assert (reply.status_code, reply.text) == (200, "public")
    assert get(gateway, public, "anything").status_code == 200  # a token is not checked either
    info = public.get_info()
    assert info.network is not None and info.network.get("allow_public_traffic") is True


def assert_private_and_serving(gateway: httpx.Client, sandbox: Sandbox, text: str) -> None:
    """A server in `sandbox` answering `text`: refused without the token, reached with it."""
    serve(sandbox, text)
    assert_refused(get(gateway, sandbox), sandbox, "is missing")
    reply = get(gateway, sandbox, sandbox.traffic_access_token)
    assert (reply.status_code, reply.text) == (200, text)


def test_privacy_survives_pause_and_connect(server: ServerProcess, gateway: httpx.Client) -> None:
    with sdk_pointed_at(server.url):
        sandbox = Sandbox.create(timeout=60, network=PRIVATE)
        try:
            sandbox.pause()
            assert Sandbox.get_info(sandbox.sandbox_id).network == PRIVATE  # paused
            resumed = Sandbox.connect(sandbox.sandbox_id)
            assert_private_and_serving(gateway, resumed, "resumed")
        finally:
            sandbox.kill()


def test_privacy_survives_a_server_restart(
    restarted: tuple[ServerProcess, str], gateway: httpx.Client
) -> None:
    """Paused before the server restarted: only its paused record remembers it was private."""
    server, sandbox_id = restarted
    with sdk_pointed_at(server.url):
        assert Sandbox.get_info(sandbox_id).network == PRIVATE
        resumed = Sandbox.connect(sandbox_id)
        try:
            assert_private_and_serving(gateway, resumed, "restarted")
        finally:
            resumed.kill()


def test_another_tenants_create_leaves_a_private_sandbox_as_it_was(
    server: ServerProcess, private: Sandbox, gateway: httpx.Client
) -> None:
    """A create forgets what the E2B layer keeps for ended sandboxes; another tenant's key, which
    does not see this sandbox, must not take it for ended (its privacy, its directory watchers)."""
    admin = {"X-API-Key": TEST_API_KEY}
    assert gateway.post("/v1/tenants", json={"name": "acme"}, headers=admin).status_code == 201
    acme_key = gateway.post("/v1/tenants/acme/keys", json={"scopes": ["*"]}, headers=admin).json()["key"]
    with sdk_pointed_at(server.url):
        watcher = private.files.watch_dir("site")
        theirs = Sandbox.create(timeout=60, api_key=acme_key)
        theirs.kill()
        private.files.write("site/new.txt", "x")
        assert any(event.name == "new.txt" for event in watcher.get_new_events())
        watcher.stop()
    assert_refused(get(gateway, private), private, "is missing")
