"""Sandbox limits through the REST API on a real server: a sandbox at its process limit answers
commands with 429 `quota_exceeded` naming the limit, not a 500."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import AUTH, ServerFactory

pytestmark = pytest.mark.system

PIDS_MAX = 16


def errors_counted(api: httpx.Client, code: str) -> float:
    needle = f'agentcell_errors_total{{code="{code}"}} '
    lines = [line for line in api.get("/metrics").text.splitlines() if line.startswith(needle)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_a_command_in_a_sandbox_at_its_process_limit_is_a_429(server_factory: ServerFactory) -> None:
    """Background `sleep`s fill the sandbox's pids (as a fork bomb's survivors did); then every
    command is refused with 429 quota_exceeded that names the limit and what to do, and the
    server counts no internal error."""
    env = {"AGENTCELL_DEFAULT_PIDS_MAX": str(PIDS_MAX), "AGENTCELL_SANDBOX_POOL": "0"}
    server = server_factory(env=env)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        created = api.post("/v1/sandboxes", json={"timeout_s": 120})
        assert created.status_code == 201, created.text
        commands = f"/v1/sandboxes/{created.json()['id']}/commands"
        sleeper = {"argv": ["sleep", "300"], "background": True}
        replies = [api.post(commands, json=sleeper) for _ in range(PIDS_MAX)]
        statuses = [r.status_code for r in replies]
        assert 201 in statuses and 429 in statuses, statuses
        assert set(statuses[statuses.index(429) :]) == {429}, statuses

        refused = api.post(commands, json={"cmd": "echo hi"})
        assert refused.status_code == 429, refused.text
        error = refused.json()
        assert error["code"] == "quota_exceeded"
        assert f"limit of {PIDS_MAX} processes (pids)" in error["message"]
        assert "kill the sandbox" in error["message"]
        assert errors_counted(api, "internal") == 0
