"""Session workspaces kept in a real S3 server (SeaweedFS on loopback) instead of the local
directory: the operator sets AGENTCELL_STORE=s3://bucket/prefix and the endpoint, nothing else."""

from __future__ import annotations

import httpx

from tests.conftest import AUTH, ServerFactory
from tests.integration.test_workspaces import HOME, call, live_session, make_fn_on, ok, without_excluded
from tests.s3server import S3Server, s3_server  # noqa: F401  (the fixture)


def test_workspaces_round_trip_through_s3(server_factory: ServerFactory, s3_server: S3Server) -> None:  # noqa: F811
    env = {
        "AGENTCELL_STORE": f"s3://{s3_server.bucket}/agentcell-it",
        "AGENTCELL_S3_ENDPOINT": s3_server.endpoint,
        "AGENTCELL_S3_ACCESS_KEY": "test",
        "AGENTCELL_S3_SECRET_KEY": "test",
    }
    server = server_factory(env=env)
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=60) as api:
        fn = make_fn_on(api, [])({})
        ok(call(api, fn, "/populate", "s3-key", dir=f"{HOME}/proj", seed="s3", files=30, kb=64))
        written = without_excluded(ok(call(api, fn, "/tree", "s3-key", dir=f"{HOME}/proj")))
        first = live_session(api, fn, "s3-key")
        assert api.delete(f"/v1/sessions/{first['id']}").status_code == 204
        restored = ok(call(api, fn, "/tree", "s3-key", dir=f"{HOME}/proj"))
        assert restored == written
        assert live_session(api, fn, "s3-key")["instance_id"] != first["instance_id"]
        listing = ok(api.get("/v1/workspaces"))
        assert listing["stored_bytes"] >= 30 * 64 * 1024
    assert not (server.state_dir / "objects").exists(), "nothing may land in the local default store"
