"""A running sandbox's network policy replaced through the APIs: agentcell's
`PUT /v1/sandboxes/{id}/network` (SDK `update_network`, CLI `sandbox network`) and E2B's
`Sandbox.update_network` with the official SDK. The new policy shows in the sandbox's info, reaches
its next commands' environment and lasts through a pause and resume; bad input gets a 4xx that
says what to change, a paused or unknown sandbox a 409 or 404. (The proxy's enforcement of a new
policy is tested through the real driver in tests/system/test_egress_update.py.)"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from e2b import Sandbox as E2bSandbox
from e2b import SandboxException
from mcp import Client

from agentcell.client import ConflictError, InvalidArgumentError, Sandbox
from tests.integration.test_cli import agentcell
from tests.integration.test_mcp import streamable

PROXY_VARIABLE = "echo ${HTTPS_PROXY:-none}"


def test_sdk_update_network_holds_for_new_commands_and_through_a_pause(server_url: str) -> None:
    with Sandbox.create(api_url=server_url, timeout_s=60) as sbx:
        assert sbx.info.network.egress == "none"
        assert sbx.commands.run(PROXY_VARIABLE).stdout == "none\n"
        info = sbx.update_network({"egress": "allowlist", "allow": ["example.com:443"]})
        assert (info.network.egress, info.network.allow) == ("allowlist", ["example.com:443"])
        assert sbx.commands.run(PROXY_VARIABLE).stdout.startswith("http://127.0.0.1:")
        sbx.pause()
        with pytest.raises(ConflictError, match="is paused; resume it first"):
            sbx.update_network("open")
        with Sandbox.resume(sbx.id, api_url=server_url) as again:
            assert again.info.network.allow == ["example.com:443"]
            assert again.commands.run(PROXY_VARIABLE).stdout.startswith("http://127.0.0.1:")
            assert again.update_network("none").network.egress == "none"
            assert again.commands.run(PROXY_VARIABLE).stdout == "none\n"
        with pytest.raises(InvalidArgumentError, match="allow"):
            sbx.update_network({"egress": "allowlist", "allow": ["not a host!"]})


def test_rest_refusals_use_the_envelope(api: httpx.Client) -> None:
    sandbox_id = api.post("/v1/sandboxes", json={"timeout_s": 60}).json()["id"]
    try:
        bad = api.put(f"/v1/sandboxes/{sandbox_id}/network", json={"egress": "allowlist"})
        assert bad.status_code == 400 and "needs at least one allow entry" in bad.json()["message"]
        wrong_kind = api.put(f"/v1/sandboxes/{sandbox_id}/network", json={"egress": "sometimes"})
        assert wrong_kind.status_code == 400 and wrong_kind.json()["code"] == "invalid_argument"
        assert api.get(f"/v1/sandboxes/{sandbox_id}").json()["network"]["egress"] == "none"
    finally:
        api.delete(f"/v1/sandboxes/{sandbox_id}")
    gone = api.put(f"/v1/sandboxes/{sandbox_id}/network", json={"egress": "open"})
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"


def test_cli_sandbox_network(server_url: str) -> None:
    sandbox_id = agentcell(server_url, "sandbox", "create", "--timeout", "60").stdout.strip()
    try:
        changed = agentcell(server_url, "sandbox", "network", sandbox_id, "--allow", "pypi.org", "--json")
        assert json.loads(changed.stdout)["network"] == {
            "egress": "allowlist",
            "allow": ["pypi.org"],
            "deny": [],
        }
        denied = agentcell(server_url, "sandbox", "network", sandbox_id, "--deny", "203.0.113.0/24", "--json")
        assert json.loads(denied.stdout)["network"] == {
            "egress": "open",
            "allow": [],
            "deny": ["203.0.113.0/24"],
        }
        named = agentcell(server_url, "sandbox", "network", sandbox_id, "--deny", "example.com")
        assert named.returncode == 2 and "'example.com' is a name" in named.stderr
        nothing = agentcell(server_url, "sandbox", "network", sandbox_id)
        assert nothing.returncode == 2 and "--egress none|open, --allow DEST or --deny ADDR" in nothing.stderr
    finally:
        agentcell(server_url, "sandbox", "kill", sandbox_id)


def test_e2b_update_network(e2b_env: str, api: httpx.Client) -> None:
    sbx = E2bSandbox.create(timeout=60, allow_internet_access=False)
    try:
        assert sbx.get_info().allow_internet_access is False

        def network() -> object:
            return api.get(f"/v1/sandboxes/{sbx.sandbox_id}").json()["network"]

        sbx.update_network({"allow_out": ["example.com"]})
        assert network() == {"egress": "allowlist", "allow": ["example.com"], "deny": []}
        assert sbx.commands.run(PROXY_VARIABLE).stdout.startswith("http://127.0.0.1:")
        sbx.update_network({})  # omitted fields are cleared: E2B's default, internet access on
        assert network() == {"egress": "open", "allow": [], "deny": []}
        sbx.update_network({"allow_internet_access": False})
        assert network() == {"egress": "none", "allow": [], "deny": []}
        sbx.update_network({"deny_out": ["8.8.8.8"]})
        assert network() == {"egress": "open", "allow": [], "deny": ["8.8.8.8"]}
        with pytest.raises(SandboxException, match="is a name; deny entries are IPs or CIDRs"):
            sbx.update_network({"deny_out": ["example.com"]})
        with pytest.raises(SandboxException, match="egressProxy is an E2B-cloud feature"):
            sbx.update_network({"egress_proxy": {"address": "socks5://127.0.0.1:1080"}})
        assert network() == {"egress": "open", "allow": [], "deny": ["8.8.8.8"]}
    finally:
        sbx.kill()


async def test_mcp_tools_choose_and_change_the_network(server_url: str) -> None:
    """Through agentcell's MCP server an agent gets a network to install packages with, and
    changes it; bad policies come back as tool errors that say why."""
    async with Client(streamable(f"{server_url}/mcp")) as client:

        async def call(name: str, **arguments: Any) -> Any:
            result = await client.call_tool(name, arguments)
            assert not result.is_error, result
            return json.loads(result.content[0].text)  # type: ignore[union-attr]

        async def refusal(name: str, **arguments: Any) -> str:
            result = await client.call_tool(name, arguments)
            assert result.is_error, result
            return str(result.content)

        created = await call("create_sandbox", timeout_s=60, egress="open")
        sandbox_id = created["id"]
        try:
            assert created["network"] == {"egress": "open", "allow": [], "deny": []}
            ran = await call("run_command", sandbox_id=sandbox_id, command=PROXY_VARIABLE)
            assert ran["stdout"].startswith("http://127.0.0.1:")
            changed = await call(
                "set_sandbox_network", sandbox_id=sandbox_id, egress="allowlist", allow=["pypi.org"]
            )
            assert changed["network"] == {"egress": "allowlist", "allow": ["pypi.org"], "deny": []}
            assert "needs at least one allow entry" in await refusal(
                "set_sandbox_network", sandbox_id=sandbox_id, egress="allowlist"
            )
            assert "'example.com' is a name" in await refusal(
                "set_sandbox_network", sandbox_id=sandbox_id, egress="open", deny=["example.com"]
            )
            assert "Input should be 'none', 'allowlist' or 'open'" in await refusal(
                "create_sandbox", egress="sometimes"
            )
        finally:
            await client.call_tool("kill_sandbox", {"sandbox_id": sandbox_id})


def test_cli_create_flags(server_url: str) -> None:
    """`sandbox create --on-timeout pause --auto-resume --deny ... --ports-host ...`; --auto-resume
    alone is refused saying why."""
    args = ["sandbox", "create", "--timeout", "60", "--on-timeout", "pause", "--auto-resume"]
    args += ["--deny", "203.0.113.0/24", "--ports-host", "localhost:${PORT}", "--json"]
    created = agentcell(server_url, *args)
    assert created.returncode == 0, created.stderr
    info = json.loads(created.stdout)
    try:
        assert (info["on_timeout"], info["auto_resume"], info["ports_host"]) == (
            "pause",
            True,
            "localhost:${PORT}",
        )
        assert info["network"] == {"egress": "open", "allow": [], "deny": ["203.0.113.0/24"]}
    finally:
        agentcell(server_url, "sandbox", "kill", info["id"])
    alone = agentcell(server_url, "sandbox", "create", "--auto-resume")
    assert alone.returncode != 0 and "auto_resume needs on_timeout 'pause'" in alone.stderr
    bad_host = agentcell(server_url, "sandbox", "create", "--ports-host", "two words")
    assert bad_host.returncode != 0 and "ports_host is a Host header" in bad_host.stderr
