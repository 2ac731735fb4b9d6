"""The network policy through the REST API and the SDK, on a real server: bad policies are refused
with a 400 envelope that says what to change; a good one reaches exactly what it allows."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agentcell.client import AsyncSandbox
from agentcell.client.errors import InvalidArgumentError
from tests.conftest import AUTH
from tests.loopback_http import QuietHandler, serving

pytestmark = pytest.mark.system


class _Hello(QuietHandler):
    def do_GET(self) -> None:
        self.answer(b"hello\n")


@pytest.fixture
def host_server() -> Iterator[int]:
    with serving(_Hello) as port:
        yield port


@pytest.mark.parametrize(
    ("network", "needle"),
    [
        ({"egress": "sometimes"}, "network.egress: Input should be 'none', 'allowlist' or 'open'"),
        (
            {"egress": "allowlist", "allow": ["10.0.0.0/33"]},
            "'10.0.0.0/33' is not a valid IP address or CIDR",
        ),
        ({"egress": "allowlist", "allow": ["foo.*.com"]}, "a wildcard may only be a whole leftmost label"),
        ({"egress": "allowlist", "allow": ["*.com"]}, "would match a whole top-level domain"),
        ({"egress": "allowlist", "allow": ["example.com:0"]}, "the port must be a number from 1 to 65535"),
        ({"egress": "allowlist", "allow": ["exa mple.com"]}, "is not a valid host name"),
        ({"egress": "allowlist", "allow": []}, "needs at least one allow entry"),
        ({"egress": "open", "allow": ["example.com"]}, "only used with egress 'allowlist'"),
        ({"egress": "none", "colour": "red"}, "network.colour"),
    ],
)
def test_bad_policies_are_refused_with_a_clear_400(server_url: str, network: object, needle: str) -> None:
    with httpx.Client(headers=AUTH, base_url=server_url, timeout=30) as api:
        before = len(api.get("/v1/sandboxes").json()["sandboxes"])
        reply = api.post("/v1/sandboxes", json={"network": network})
        assert reply.status_code == 400, reply.text
        body = reply.json()
        assert body["code"] == "invalid_argument" and needle in body["message"], body
        assert len(api.get("/v1/sandboxes").json()["sandboxes"]) == before


def test_a_function_with_a_bad_policy_is_not_deployed(server_url: str) -> None:
    config = {"cmd": "python3 -m http.server $PORT", "network": {"egress": "allowlist", "allow": ["1.2.3/8"]}}
    with httpx.Client(headers=AUTH, base_url=server_url, timeout=30) as api:
        reply = api.put("/v1/functions/egress-bad", files={"config": (None, json.dumps(config))})
        assert reply.status_code == 400 and "not a valid IP address or CIDR" in reply.json()["message"]
        assert api.get("/v1/functions/egress-bad").status_code == 404


async def test_sdk_sandbox_reaches_only_what_it_allows(server_url: str, host_server: int) -> None:
    allowed = {"egress": "allowlist", "allow": [f"127.0.0.1:{host_server}"]}
    via_proxy = {"NO_PROXY": "", "no_proxy": ""}
    async with AsyncSandbox.create(network=allowed, api_url=server_url) as sbx:
        assert sbx.info.network.egress == "allowlist"
        result = await sbx.commands.run(["curl", "-sS", f"http://127.0.0.1:{host_server}/"], env=via_proxy)
        assert result.stdout == "hello\n"
    async with AsyncSandbox.create(api_url=server_url) as sbx:
        assert sbx.info.network.egress == "none"
        result = await sbx.commands.run(["curl", "-sS", f"http://127.0.0.1:{host_server}/"], env=via_proxy)
        assert result.exit_code != 0 and "hello" not in result.stdout
    with pytest.raises(InvalidArgumentError, match="not a valid IP address"):
        await AsyncSandbox.create(network={"egress": "allowlist", "allow": ["300.1.1.1"]}, api_url=server_url)


FETCHER_APP = """
import os, urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

os.environ["NO_PROXY"] = os.environ["no_proxy"] = ""  # the host's loopback, through the proxy

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": os.environ["HTTP_PROXY"]}))
        try:
            body = opener.open(os.environ["TARGET"], timeout=5).read()
        except Exception as e:
            body = repr(e).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def code_archive(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            entry = tarfile.TarInfo(name)
            entry.size, entry.mode = len(data), 0o644
            tar.addfile(entry, io.BytesIO(data))
    return buffer.getvalue()


def test_a_function_instance_gets_its_policy(server_url: str, host_server: int) -> None:
    target = f"http://127.0.0.1:{host_server}/"
    code = code_archive({"app.py": FETCHER_APP})
    with httpx.Client(headers=AUTH, base_url=server_url, timeout=60) as api:
        for name, allow in (("egress-fn-yes", f"127.0.0.1:{host_server}"), ("egress-fn-no", "other.test")):
            config = {
                "cmd": "python3 app.py",
                "env": {"TARGET": target},
                "network": {"egress": "allowlist", "allow": [allow]},
            }
            reply = api.put(
                f"/v1/functions/{name}", files={"config": (None, json.dumps(config)), "code": ("c.tgz", code)}
            )
            assert reply.status_code in (200, 201), reply.text
        try:
            assert api.get("/fn/egress-fn-yes/").text == "hello\n"
            denied = api.get("/fn/egress-fn-no/").text
            assert denied == "<HTTPError 403: 'Forbidden'>", denied
        finally:
            for name in ("egress-fn-yes", "egress-fn-no"):
                api.delete(f"/v1/functions/{name}")


def agentcell(server_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "agentcell"), "--url", server_url, *args]
    return subprocess.run(command, text=True, capture_output=True, timeout=90, stdin=subprocess.DEVNULL)


def test_the_cli_sets_the_policy(server_url: str, host_server: int) -> None:
    created = agentcell(server_url, "sandbox", "create", "--allow", f"127.0.0.1:{host_server}", "--json")
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    try:
        assert info["network"] == {"egress": "allowlist", "allow": [f"127.0.0.1:{host_server}"], "deny": []}
        fetched = agentcell(
            server_url,
            "exec",
            info["id"],
            "--",
            "sh",
            "-c",
            f"NO_PROXY= no_proxy= curl -sS 127.0.0.1:{host_server}",
        )
        assert fetched.stdout == "hello\n", fetched.stderr
    finally:
        agentcell(server_url, "sandbox", "kill", info["id"])
    opened = agentcell(server_url, "sandbox", "create", "--egress", "open", "--json")
    assert opened.returncode == 0 and json.loads(opened.stdout)["network"]["egress"] == "open"
    agentcell(server_url, "sandbox", "kill", json.loads(opened.stdout)["id"])
    refused = agentcell(server_url, "sandbox", "create", "--allow", "10.0.0.0/33")
    assert refused.returncode != 0 and "'10.0.0.0/33' is not a valid IP address or CIDR" in refused.stderr


async def test_open_does_not_reach_the_server_itself(server_url: str) -> None:
    port = httpx.URL(server_url).port
    async with AsyncSandbox.create(network="open", api_url=server_url) as sbx:
        result = await sbx.commands.run(
            ["curl", "-sS", f"http://127.0.0.1:{port}/v1/sandboxes"], env={"NO_PROXY": "", "no_proxy": ""}
        )
        assert "is denied" in result.stdout and "the agentcell server itself" in result.stdout
