"""AGENTCELL_MAX_SANDBOXES on a real server: sandboxes and function instances share it."""

from __future__ import annotations

import httpx

from tests.conftest import AUTH, ServerFactory
from tests.integration.conftest import deploy

KEY = "x-agentcell-session-id"


def test_sandboxes_and_function_instances_share_the_node(server_factory: ServerFactory) -> None:
    """With AGENTCELL_MAX_SANDBOXES=2 (no pool), one sandbox and one session's instance fill the
    node: a request opening another session and a session create are 503s naming the node's
    capacity, a sandbox create the 429 of a full node, while the live session's requests go on;
    /metrics shows the slots held. Ending the session frees its room for a sandbox."""
    server = server_factory(env={"AGENTCELL_MAX_SANDBOXES": "2", "AGENTCELL_SANDBOX_POOL": "0"})
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        assert deploy(api, "cap", {"cmd": "python3 app.py"}).status_code == 200
        assert api.post("/v1/sandboxes", json={"timeout_s": 120}).status_code == 201
        session = api.post("/v1/functions/cap/sessions", json={"key": "first"})
        assert session.status_code == 201, session.text

        for refused in (
            api.get("/fn/cap/whoami", headers={KEY: "second"}),
            api.post("/v1/functions/cap/sessions", json={"key": "third"}),
        ):
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            error = refused.json()
            assert error["code"] == "unavailable" and error["request_id"]
            assert "no room for a new function instance" in error["message"]
            assert "at most 2 sandboxes and function instances" in error["message"]
            assert "(AGENTCELL_MAX_SANDBOXES)" in error["message"]
        full = api.post("/v1/sandboxes", json={"timeout_s": 120})
        assert full.status_code == 429, full.text
        assert "AGENTCELL_MAX_SANDBOXES" in full.json()["message"]
        assert "1 sandbox(es) and 1 function instance(s)" in full.json()["message"]

        assert api.get("/fn/cap/whoami", headers={KEY: "first"}).status_code == 200
        metrics = api.get("/metrics").text
        assert 'agentcell_node_capacity_used{kind="instance"} 1' in metrics
        assert 'agentcell_node_capacity_used{kind="sandbox"} 1' in metrics
        assert "agentcell_node_capacity_limit 2" in metrics

        assert api.delete(f"/v1/sessions/{session.json()['id']}").status_code in (200, 204)
        again = api.post("/v1/sandboxes", json={"timeout_s": 120})
        assert again.status_code == 201, again.text
