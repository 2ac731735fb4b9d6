"""Configs that can never serve, on the real server and Linux driver: a function whose command
fails, with warm instances wanted, must not restart them in a loop that burns the node's CPU
(another tenant's), and its requests still get the error envelope saying why."""

from __future__ import annotations

import json
import time

import httpx

from tests.conftest import ServerProcess
from tests.integration.test_hunt_deploy_versions import code_with


def failed_starts(server: ServerProcess, name: str) -> int:
    text = server.log_path.read_text(errors="replace")
    return text.count(f" of {name} failed to start")


def test_a_failing_command_with_warm_instances_is_not_restarted_in_a_loop(
    api: httpx.Client, fn_name: str, shared_server: ServerProcess
) -> None:
    config = {"cmd": "exit 3", "min_warm": 3}
    files: dict[str, tuple[str | None, str | bytes]] = {
        "config": (None, json.dumps(config)),
        "code": ("c.tgz", code_with("x")),
    }
    assert api.put(f"/v1/functions/{fn_name}", files=files).status_code == 200
    time.sleep(6)
    assert failed_starts(shared_server, fn_name) <= 12  # (was ~100 a second)
    reply = api.get(f"/fn/{fn_name}/", headers={"x-agentcell-session-id": "k"})
    assert reply.status_code == 503, reply.text
    assert "exited with code 3" in reply.json()["message"]
