"""Quota values at their edges, through the API of a real server: 0 is "none allowed" and null is
"unlimited" (falling back to the node's default) for every quota, the storage quota included."""

from __future__ import annotations

import httpx

from tests.conftest import AUTH, ServerFactory
from tests.integration.test_workspaces import make_fn_on, ok


def test_a_storage_quota_of_zero_stores_nothing_and_null_falls_back_to_the_node(
    server_factory: ServerFactory,
) -> None:
    """max_storage_mb 0 refuses every snapshot with the quota error (it used to mean unlimited);
    null gives the node's AGENTCELL_TENANT_STORAGE_QUOTA_MB back."""
    server = server_factory(env={"AGENTCELL_TENANT_STORAGE_QUOTA_MB": "1"})
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        ok(api.patch("/v1/tenants/default", json={"quotas": {"max_storage_mb": 0}}))
        assert ok(api.get("/v1/workspaces"))["quota_bytes"] == 0
        fn = make_fn_on(api, [])({})
        session = ok(api.post(f"/v1/functions/{fn}/sessions", json={"key": "zero"}))
        refused = api.post(f"/v1/sessions/{session['id']}/snapshot")
        assert refused.status_code == 429, refused.text
        assert "at its quota of 0" in refused.json()["message"]
        assert ok(api.get("/v1/workspaces"))["stored_bytes"] == 0
        ok(api.patch("/v1/tenants/default", json={"quotas": {"max_storage_mb": None}}))
        assert ok(api.get("/v1/workspaces"))["quota_bytes"] == 1 << 20
        assert api.post(f"/v1/sessions/{session['id']}/snapshot").status_code == 201
