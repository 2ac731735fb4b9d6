"""Publishing (POST /v1/sandboxes/{id}/publish, `Sandbox.publish`, `agentcell fn deploy
--from-sandbox`, the MCP server's `publish_sandbox`): a directory an agent built in a sandbox
becomes the next version of a function, served by the gateway from its own copy of the files while
the sandbox runs on, and the version remembers the sandbox it came from. Real server, real
sandboxes and instances."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from agentcell.client import Agentcell, ConflictError, InvalidArgumentError, Sandbox
from tests.conftest import AUTH
from tests.integration.test_cli import ok
from tests.integration.test_mcp import streamable

APP = """
import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (open("data.txt").read() + " from " + os.getcwd()).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


@pytest.fixture
def built(server_url: str) -> Iterator[Sandbox]:
    """A sandbox in which an app has been written to ~/app."""
    with Sandbox.create(api_url=server_url, timeout_s=300, metadata={"task": "publish-me"}) as sandbox:
        sandbox.files.write("app/app.py", APP)
        sandbox.files.write("app/data.txt", "v1")
        yield sandbox


def served(server_url: str, fn: str, key: str) -> str:
    reply = httpx.get(f"{server_url}/fn/{fn}/", headers={"x-agentcell-session-id": key, **AUTH}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.text


def test_a_sandbox_directory_becomes_a_function_that_remembers_it(
    server_url: str, built: Sandbox, fn_name: str, tmp_path: Path
) -> None:
    info = built.publish(fn_name, path="app", cmd="python3 app.py")
    assert (info.name, info.version, info.url_path) == (fn_name, 1, f"/fn/{fn_name}/")
    source = info.config.published_from
    assert source is not None
    assert (source.sandbox_id, source.path, source.template) == (built.id, "/home/user/app", "base")
    assert source.sandbox_metadata == {"task": "publish-me"} and info.config.template == "base"
    assert served(server_url, fn_name, "a") == "v1 from /code"

    built.files.write("app/data.txt", "v2")  # the function has its own copy: v1 until republished
    assert served(server_url, fn_name, "b") == "v1 from /code"
    again = built.publish(fn_name, path="/home/user/app", cmd="python3 app.py", min_warm=1)
    assert again.version == 2 and again.config.min_warm == 1
    assert served(server_url, fn_name, "c") == "v2 from /code"
    assert built.commands.run("cat app/data.txt").stdout == "v2"  # the sandbox ran on, untouched

    code = tmp_path / "uploaded"
    code.mkdir()
    (code / "app.py").write_text(APP)
    (code / "data.txt").write_text("v3")
    with Agentcell(api_url=server_url) as client:  # new code under the live config, lineage and all
        deployed = client.functions.deploy_config(fn_name, code, again.config)
    assert deployed.version == 3 and deployed.config.min_warm == 1
    assert deployed.config.published_from is None  # not a sandbox's code
    assert served(server_url, fn_name, "d") == "v3 from /code"


GREETER = """
import http.server, os, greeting
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = greeting.TEXT.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def test_packages_installed_at_run_time_go_with_the_code(server_url: str, fn_name: str) -> None:
    """What `pip install` put in ~/.local (a module, and a script on PATH) is carried to
    /code/.local and found there; `packages=False` leaves it behind."""
    with Sandbox.create(api_url=server_url, timeout_s=300) as sandbox:
        site = sandbox.commands.run("python3 -m site --user-site").stdout.strip()
        assert site.startswith("/home/user/.local/")
        sandbox.files.write(f"{site}/greeting.py", "TEXT = 'hello from a package'\n")
        sandbox.files.write(".local/bin/serve-greeter", "#!/bin/sh\nexec python3 app.py\n")
        sandbox.commands.run("chmod +x .local/bin/serve-greeter")
        sandbox.files.write("greeter/app.py", GREETER)

        info = sandbox.publish(fn_name, path="greeter", cmd="serve-greeter", env={"MINE": "1"})
        assert info.config.env["PYTHONUSERBASE"] == "/code/.local" and info.config.env["MINE"] == "1"
        assert info.config.env["PATH"].startswith("/code/.local/bin:")
        assert "NODE_PATH" in info.config.env
        assert served(server_url, fn_name, "p") == "hello from a package"

        bare = sandbox.publish(fn_name, path="greeter", cmd="python3 app.py", packages=False)
        assert "PYTHONUSERBASE" not in bare.config.env and bare.version == 2


def test_bad_publishes_are_refused_with_what_to_change(
    server_url: str, built: Sandbox, fn_name: str, api: httpx.Client
) -> None:
    def refused(status: int, body: Mapping[str, object], sandbox_id: str = built.id) -> str:
        reply = api.post(f"/v1/sandboxes/{sandbox_id}/publish", json=body)
        assert reply.status_code == status, reply.text
        message: str = reply.json()["message"]
        return message

    good = {"function": fn_name, "path": "app", "config": {"cmd": "python3 app.py"}}
    assert "is not a directory" in refused(400, {**good, "path": "app/app.py"})
    assert "no such file" in refused(404, {**good, "path": "nowhere"}).lower()
    assert "function" in refused(400, {**good, "function": "Not_A_Name"})
    assert "cmd" in refused(400, {**good, "config": {}})
    assert (
        "extra" in refused(400, {**good, "config": {"cmd": "x", "published_from": None, "bogus": 1}}).lower()
    )
    refused(404, good, sandbox_id="sbx_0000000000000000")
    assert "publish the directory of the project itself" in refused(413, {**good, "path": "/usr"})
    deep = "app/deep/" + "/".join(str(level) for level in range(15))  # 16 levels below app/
    built.commands.run(f"mkdir -p {deep} && touch {deep}/x")
    assert "16 levels below /home/user/app and holds more" in refused(400, good)  # not cut silently
    downloaded = api.get(f"/v1/sandboxes/{built.id}/files/archive", params={"path": "app"})
    assert downloaded.status_code == 400 and "levels below" in downloaded.json()["message"]
    built.commands.run("rm -r app/deep")
    built.commands.run("chmod 000 app/data.txt")
    assert "app/data.txt" in refused(403, good)
    built.commands.run("chmod 644 app/data.txt")
    assert api.get(f"/v1/functions/{fn_name}").status_code == 404  # nothing was made meanwhile

    with pytest.raises(InvalidArgumentError, match="function"):
        built.publish("Bad Name", cmd="x")
    built.pause()
    with pytest.raises(ConflictError):
        built.publish(fn_name, path="app", cmd="python3 app.py")


def test_the_cli_publishes_with_deploys_options(server_url: str, built: Sandbox, fn_name: str) -> None:
    out = ok(
        server_url, "fn", "deploy", "--from-sandbox", built.id, "--sandbox-path", "app",
        "--name", fn_name, "--cmd", "python3 app.py", "--env", "MODE=prod",
    )  # fmt: skip
    assert out == f"published {built.id} as {fn_name} version 1: {server_url}/fn/{fn_name}/\n"
    shown = json.loads(ok(server_url, "fn", "get", fn_name))
    assert shown["config"]["env"] == {"MODE": "prod"}
    assert shown["config"]["published_from"]["path"] == "/home/user/app"
    assert served(server_url, fn_name, "k") == "v1 from /code"


async def test_an_agent_publishes_through_the_mcp_server(server_url: str, fn_name: str) -> None:
    """agentcell's own MCP server: write the app with its tools, publish it, reach it; a refusal
    is a tool error that says why."""
    async with Client(streamable(f"{server_url}/mcp")) as client:

        async def call(name: str, **arguments: Any) -> Any:
            result = await client.call_tool(name, arguments)
            assert not result.is_error, result
            return json.loads(result.content[0].text)  # type: ignore[union-attr]

        sandbox_id = (await call("create_sandbox", timeout_s=120))["id"]
        try:
            await call("write_file", sandbox_id=sandbox_id, path="site/app.py", text=APP)
            await call("write_file", sandbox_id=sandbox_id, path="site/data.txt", text="from mcp")
            refused = await client.call_tool(
                "publish_sandbox",
                {"sandbox_id": sandbox_id, "function": fn_name, "command": "x", "path": "none"},
            )
            assert refused.is_error and "not_found" in str(refused.content)
            published = await call(
                "publish_sandbox",
                sandbox_id=sandbox_id,
                function=fn_name,
                command="python3 app.py",
                path="site",
            )
            assert (
                published["version"] == 1
                and published["config"]["published_from"]["sandbox_id"] == sandbox_id
            )
            assert served(server_url, fn_name, "m") == "from mcp from /code"
        finally:
            await client.call_tool("kill_sandbox", {"sandbox_id": sandbox_id})
