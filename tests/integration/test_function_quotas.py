"""Tenants' function quotas on a real server with AGENTCELL_AUTH=keys: max_functions refuses a new
function (never a redeploy) with the quota error, and max_code_mb refuses code that would pass it
while the function's version in place goes on serving; what a tenant stores is still counted after
a restart."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import AUTH, TEST_API_KEY, ServerFactory, ServerProcess
from tests.integration.conftest import FIXTURES, deploy
from tests.integration.test_cli import ok

KEYS = {"AGENTCELL_AUTH": "keys", "AGENTCELL_ADMIN_KEY": TEST_API_KEY}
FN = {"cmd": "python3 app.py"}
SESSION = {"x-agentcell-session-id": "q"}
KiB = 1 << 10


def tenant_key(server: ServerProcess, name: str, **quotas: Any) -> dict[str, str]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as admin:
        assert admin.post("/v1/tenants", json={"name": name, "quotas": quotas}).status_code == 201
        key = admin.post(f"/v1/tenants/{name}/keys", json={"scopes": ["*"]}).json()["key"]
    return {"x-api-key": key}


def echo_with(tmp_path: Path, kib: int) -> Path:
    """The echo function's code with `kib` KiB more."""
    code = tmp_path / f"echo-{kib}"
    code.mkdir()
    shutil.copy(FIXTURES / "echo_fn" / "app.py", code)
    (code / "blob.bin").write_bytes(b"\0" * (kib * KiB))
    return code


def refused(reply: httpx.Response, quota: str) -> str:
    assert reply.status_code == 429, reply.text
    assert reply.json()["code"] == "quota_exceeded"
    message: str = reply.json()["message"]
    assert quota in message
    return message


def test_max_functions_refuses_a_new_function_never_a_redeploy(server_factory: ServerFactory) -> None:
    server = server_factory(env=KEYS)
    with httpx.Client(
        base_url=server.url, headers=tenant_key(server, "few", max_functions=1), timeout=60
    ) as api:
        assert deploy(api, "one", FN).status_code == 200
        message = refused(deploy(api, "two", FN), "max_functions")
        assert "at its quota of 1 functions" in message and "DELETE /v1/functions/{name}" in message
        assert api.get("/fn/one/whoami", headers=SESSION).status_code == 200
        again = deploy(api, "one", FN)
        assert again.status_code == 200 and again.json()["version"] == 2
        assert [f["name"] for f in api.get("/v1/functions").json()["functions"]] == ["one"]
        assert api.delete("/v1/functions/one").status_code == 204
        assert deploy(api, "two", FN).status_code == 200  # a slot again


def test_code_past_max_code_mb_is_refused_the_old_version_serves_and_a_restart_still_counts(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory(env=KEYS)
    key = tenant_key(server, "lean", max_code_mb=1)
    with httpx.Client(base_url=server.url, headers=key, timeout=60) as api:
        assert deploy(api, "small", FN).status_code == 200
        assert api.get("/fn/small/whoami", headers=SESSION).status_code == 200
        message = refused(deploy(api, "small", FN, echo_with(tmp_path, 2048)), "max_code_mb")
        assert "quota of 1 MiB" in message
        assert api.get("/v1/functions/small").json()["version"] == 1
        assert api.get("/fn/small/whoami", headers=SESSION).status_code == 200
        assert sorted(p.name for p in (server.state_dir / "functions" / "lean.small").iterdir()) == ["v1"]
        assert deploy(api, "filler", FN, echo_with(tmp_path, 600)).status_code == 200
    server.stop()

    restarted = server_factory(state_dir=server.state_dir, env=KEYS)
    with httpx.Client(base_url=restarted.url, headers=key, timeout=60) as api:
        # 600 KiB more fits 1 MiB alone, not beside the 600 KiB stored before the restart
        refused(deploy(api, "more", FN, echo_with(tmp_path, 601)), "max_code_mb")
        assert not (restarted.state_dir / "functions" / "lean.more").exists()
        with httpx.Client(base_url=restarted.url, headers=AUTH, timeout=60) as admin:
            admin.patch("/v1/tenants/lean", json={"quotas": {"max_code_mb": 2}}).raise_for_status()
        assert deploy(api, "more", FN, echo_with(tmp_path, 602)).status_code == 200


def test_the_cli_sets_both_quotas(server_url: str) -> None:
    tenant = "fq-" + uuid.uuid4().hex[:8]
    args = ["--max-functions", "20", "--max-code", "2GiB", "--json"]
    quotas = json.loads(ok(server_url, "tenant", "create", tenant, *args))["quotas"]
    try:
        assert (quotas["max_functions"], quotas["max_code_mb"]) == (20, 2048)
        quotas = json.loads(ok(server_url, "tenant", "set", tenant, "--max-code", "512M", "--json"))["quotas"]
        assert (quotas["max_functions"], quotas["max_code_mb"]) == (None, 512)  # set replaces them all
    finally:
        ok(server_url, "tenant", "rm", tenant)
