"""`ports_host` (E2B's `network={"mask_request_host": ...}`): requests through the gateway to a
sandbox's ports arrive with that Host header, `${PORT}` replaced by the port, instead of the
gateway's `{port}-{id}.{domain}` (which X-Forwarded-Host keeps) — what dev servers that accept
only their own name need. A sandbox without it gets the client's Host; a value that is not a Host
header is a 400 that says what one is."""

from __future__ import annotations

import httpx
import pytest
from e2b import Sandbox as E2bSandbox

from agentcell.client import Sandbox
from tests.conftest import TEST_API_KEY, ServerProcess
from tests.integration.conftest import E2B_DOMAIN, sdk_pointed_at

ECHO = """
import http.server

class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        hosts = self.headers.get_all("Host") or []
        body = f"{'|'.join(hosts)} forwarded {self.headers['X-Forwarded-Host']}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("127.0.0.1", 8080), Echo).serve_forever()
"""
ADMIN = {"X-API-Key": TEST_API_KEY}


@pytest.fixture(scope="module")
def server(private_traffic: tuple[ServerProcess, list[str]]) -> ServerProcess:
    """The session's server that routes `{port}-{id}.E2B_DOMAIN` hosts (keys required)."""
    return private_traffic[0]


def serve_echo(sandbox: Sandbox) -> None:
    sandbox.files.write("/home/user/echo.py", ECHO.encode())
    sandbox.commands.run("exec python3 echo.py", background=True)
    probe = "import socket; socket.create_connection(('127.0.0.1', 8080)).close()"
    sandbox.commands.run(f'until python3 -c "{probe}" 2>/dev/null; do sleep 0.05; done', timeout_s=60)


def seen(server: ServerProcess, sandbox_id: str) -> str:
    host = f"8080-{sandbox_id}.{E2B_DOMAIN}"
    return httpx.get(f"{server.url}/", headers={"Host": host}, timeout=60).text


def test_requests_to_its_ports_arrive_with_its_host(server: ServerProcess) -> None:
    create = {"api_url": server.url, "api_key": TEST_API_KEY, "timeout_s": 60}
    with (
        Sandbox.create(ports_host="localhost:${PORT}", **create) as masked,  # type: ignore[arg-type]
        Sandbox.create(**create) as plain,  # type: ignore[arg-type]
    ):
        assert masked.info.ports_host == "localhost:${PORT}" and plain.info.ports_host is None
        serve_echo(masked)
        serve_echo(plain)
        public = f"8080-{masked.id}.{E2B_DOMAIN}"
        assert seen(server, masked.id) == f"localhost:8080 forwarded {public}"
        assert (
            seen(server, plain.id) == f"8080-{plain.id}.{E2B_DOMAIN} forwarded 8080-{plain.id}.{E2B_DOMAIN}"
        )


def test_e2b_mask_request_host(server: ServerProcess) -> None:
    with sdk_pointed_at(server.url):
        sbx = E2bSandbox.create(timeout=60, network={"mask_request_host": "app.local:${PORT}"})
    try:
        info = httpx.get(f"{server.url}/e2b/sandboxes/{sbx.sandbox_id}", headers=ADMIN).json()
        assert info["network"]["maskRequestHost"] == "app.local:${PORT}"
        same = Sandbox.connect(sbx.sandbox_id, api_url=server.url, api_key=TEST_API_KEY)
        serve_echo(same)
        same.close()  # (the SDK's connection; `with` would kill the sandbox)
        assert seen(server, sbx.sandbox_id).startswith("app.local:8080 forwarded ")
    finally:
        sbx.kill()


@pytest.mark.parametrize("host", ["evil\r\nx-injected: 1", "two words", "", "a" * 300])
def test_a_value_that_is_not_a_host_is_refused(server: ServerProcess, host: str) -> None:
    refused = httpx.post(f"{server.url}/v1/sandboxes", json={"ports_host": host}, headers=ADMIN)
    assert refused.status_code == 400, refused.text
    assert "ports_host" in refused.json()["message"]
