"""Tenants and API keys on a server with AGENTCELL_AUTH=keys: the bootstrap admin key, scopes,
the cross-tenant battery (a foreign id answers exactly like an unknown one, through the API and
the gateway), revocation that takes effect at once on both paths, and quotas."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration.conftest import deploy

ADMIN_KEY = "ac_testadmin_" + "k" * 32
FN = {"cmd": "python3 app.py", "idle_timeout_s": 600, "workspace": {"persist": True, "sync_interval_s": 0}}
SESSION = "x-agentcell-session-id"


class Tenant:
    def __init__(self, url: str, name: str, key: str) -> None:
        self.name, self.key = name, key
        self.http = httpx.Client(base_url=url, timeout=60, headers={"x-api-key": key})
        OPENED.append(self)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = self.http.request(method, path, **kwargs)
        assert reply.status_code < 300, reply.text
        return reply.json() if reply.content else None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("tenants") / "state",
        env={"AGENTCELL_AUTH": "keys", "AGENTCELL_ADMIN_KEY": ADMIN_KEY},
    )
    yield server
    server.stop()


OPENED: list[Tenant] = []


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    for tenant in OPENED:
        tenant.http.close()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Tenant:
    return Tenant(server.url, "default", ADMIN_KEY)


def new_tenant(admin: Tenant, server: ServerProcess, name: str, **quotas: Any) -> Tenant:
    admin.ok("POST", "/v1/tenants", json={"name": name, "quotas": quotas})
    key = admin.ok("POST", f"/v1/tenants/{name}/keys", json={"scopes": ["*"], "name": "test"})["key"]
    return Tenant(server.url, name, key)


@pytest.fixture(scope="module")
def alice(admin: Tenant, server: ServerProcess) -> Tenant:
    return new_tenant(admin, server, "alice")


@pytest.fixture(scope="module")
def bob(admin: Tenant, server: ServerProcess) -> Tenant:
    return new_tenant(admin, server, "bob")


def test_the_admin_key_is_bootstrapped_into_a_private_file(server: ServerProcess, admin: Tenant) -> None:
    key_file = server.state_dir / "admin.key"
    assert key_file.read_text().strip() == ADMIN_KEY
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert ADMIN_KEY not in (server.state_dir / "meta.db").read_bytes().decode("latin-1")  # hashed
    anonymous = httpx.get(f"{server.url}/v1/sandboxes")
    assert anonymous.status_code == 401 and "API key" in anonymous.json()["message"]
    forged = httpx.get(f"{server.url}/v1/sandboxes", headers={"authorization": "Bearer ac_nope_nope"})
    assert forged.status_code == 401
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert admin.http.get("/v1/sandboxes").status_code == 200


def test_a_tenant_cannot_see_or_touch_another_tenant_s_things(alice: Tenant, bob: Tenant) -> None:
    sandbox = bob.ok("POST", "/v1/sandboxes", json={"timeout_s": 120})["id"]
    assert deploy(bob.http, "chat", FN).status_code == 200
    assert bob.http.get("/fn/chat/whoami", headers={SESSION: "b1"}).status_code == 200
    session = bob.ok("GET", "/v1/functions/chat/sessions")["sessions"][0]
    bob.ok("POST", f"/v1/sessions/{session['id']}/snapshot")
    workspace = session["workspace"]["storage_path"]
    assert workspace.startswith("bob/chat/")
    foreign: list[tuple[Any, ...]] = [
        ("GET", f"/v1/sandboxes/{sandbox}"),
        ("DELETE", f"/v1/sandboxes/{sandbox}"),
        ("POST", f"/v1/sandboxes/{sandbox}/timeout", {"timeout_s": 5}),
        ("POST", f"/v1/sandboxes/{sandbox}/commands", {"cmd": "true"}),
        ("GET", f"/v1/sandboxes/{sandbox}/files?path=/etc/hostname"),
        ("GET", f"/v1/sandboxes/{sandbox}/files/list?path=/home/user"),
        ("GET", "/v1/functions/chat"),
        ("DELETE", "/v1/functions/chat"),
        ("GET", "/v1/functions/chat/sessions"),
        ("GET", f"/v1/sessions/{session['id']}"),
        ("PATCH", f"/v1/sessions/{session['id']}", {"ttl_s": 5}),
        ("POST", f"/v1/sessions/{session['id']}/snapshot"),
        ("DELETE", f"/v1/sessions/{session['id']}"),
        ("GET", f"/v1/workspaces/{workspace}"),
        ("DELETE", f"/v1/workspaces/{workspace}"),
        ("GET", "/v1/sandboxes/sbx_0123456789abcdef"),  # guessed ids answer the same
        ("GET", "/v1/sessions/ses_00000000000000000000"),
    ]
    for method, path, *body in foreign:
        reply = alice.http.request(method, path, json=body[0] if body else None)
        assert reply.status_code == 404, (method, path, reply.status_code, reply.text)
    for method, path in [("GET", "/v1/functions/chat"), ("POST", "/v1/functions/chat/sessions")]:
        message = alice.http.request(method, path).json()["message"]  # the name alice used, no more
        assert "function 'chat' not found" in message and "alice." not in message, message
    assert alice.http.get("/fn/chat/whoami", headers={SESSION: "b1"}).status_code == 404
    assert [s["id"] for s in alice.ok("GET", "/v1/sandboxes")["sandboxes"]] == []
    assert alice.ok("GET", "/v1/functions")["functions"] == []
    assert alice.ok("GET", "/v1/sessions")["sessions"] == []
    assert alice.ok("GET", "/v1/workspaces")["workspaces"] == []
    usage = alice.ok("GET", "/v1/usage", params={"by": "sandbox"})
    assert all(line["sandbox_id"] != sandbox for line in usage["lines"])
    assert alice.http.get("/v1/usage", params={"tenant": "bob"}).status_code == 403
    # bob's things are untouched
    assert bob.ok("GET", f"/v1/sandboxes/{sandbox}")["state"] == "running"
    assert bob.ok("GET", f"/v1/sessions/{session['id']}")["state"] in ("idle", "active")
    bob.ok("DELETE", f"/v1/sandboxes/{sandbox}")


def test_another_tenant_s_usage_is_for_admin_keys_only(admin: Tenant, alice: Tenant, bob: Tenant) -> None:
    """A tenant's key naming another tenant in /v1/usage is a 403 that says why, whether that
    tenant exists or not (so it learns nothing); its own is fine. An admin naming an unknown
    tenant is a 404 that names it."""
    for other in ("bob", "nobody", "*"):
        refused = alice.http.get("/v1/usage", params={"tenant": other})
        assert refused.status_code == 403, refused.text
        assert "only admin keys may read other tenants' usage" in refused.json()["message"]
    assert alice.http.get("/v1/usage", params={"tenant": "alice"}).status_code == 200
    unknown = admin.http.get("/v1/usage", params={"tenant": "nobody"})
    assert unknown.status_code == 404, unknown.text
    assert "tenant 'nobody' not found" in unknown.json()["message"]
    assert admin.http.get("/v1/usage", params={"tenant": "bob"}).status_code == 200
    assert admin.http.get("/v1/usage", params={"tenant": "*"}).status_code == 200


def test_the_same_function_name_in_two_tenants_is_two_functions(alice: Tenant, bob: Tenant) -> None:
    assert deploy(alice.http, "echo", {"cmd": "python3 app.py"}).status_code == 200
    assert deploy(bob.http, "echo", {"cmd": "python3 app.py"}).status_code == 200
    a = alice.ok("GET", "/fn/echo/whoami", headers={SESSION: "same-key"})
    b = bob.ok("GET", "/fn/echo/whoami", headers={SESSION: "same-key"})
    assert a["instance"] != b["instance"]
    info = alice.ok("GET", "/v1/functions/echo")
    assert info["name"] == "echo" and info["url_path"] == "/fn/echo/"
    seen = alice.ok("GET", "/fn/echo/headers", headers={SESSION: "same-key"})
    assert "x-api-key" not in seen  # the caller's agentcell key never reaches the function
    alice.ok("DELETE", "/v1/functions/echo")
    bob.ok("DELETE", "/v1/functions/echo")


def test_scopes_limit_what_a_key_may_do(admin: Tenant, alice: Tenant, server: ServerProcess) -> None:
    reader = admin.ok("POST", "/v1/tenants/alice/keys", json={"scopes": ["sandboxes:read"]})["key"]
    limited = Tenant(server.url, "alice", reader)
    assert limited.http.get("/v1/sandboxes").status_code == 200
    denied = limited.http.post("/v1/sandboxes", json={})
    assert denied.status_code == 403 and "sandboxes:write" in denied.json()["message"]
    assert limited.http.get("/v1/tenants").status_code == 403
    assert alice.http.get("/v1/tenants").status_code == 403  # "*" of a tenant is not admin of others
    bad_scope = admin.http.post("/v1/tenants/alice/keys", json={"scopes": ["root"]})
    assert bad_scope.status_code == 400 and "unknown scopes" in bad_scope.json()["message"]
    escalation = admin.http.post("/v1/tenants/alice/keys", json={"scopes": ["admin"]})
    assert escalation.status_code == 400 and "admin scope" in escalation.json()["message"]


def test_a_revoked_key_stops_at_once_on_the_api_and_the_gateway(
    admin: Tenant, alice: Tenant, server: ServerProcess
) -> None:
    made = admin.ok("POST", "/v1/tenants/alice/keys", json={"scopes": ["*"], "name": "short-lived"})
    temp = Tenant(server.url, "alice", made["key"])
    assert deploy(temp.http, "revoked", {"cmd": "python3 app.py"}).status_code == 200
    for _ in range(3):  # warm now, and the connection pinned to the session (router.WarmPin)
        assert temp.http.get("/fn/revoked/whoami", headers={SESSION: "r"}).status_code == 200
    admin.ok("DELETE", f"/v1/keys/{made['id']}")
    assert temp.http.get("/fn/revoked/whoami", headers={SESSION: "r"}).status_code == 401
    assert temp.http.get("/v1/functions").status_code == 401
    assert [
        k["revoked_at"] is not None
        for k in admin.ok("GET", "/v1/tenants/alice/keys")["keys"]
        if k["id"] == made["id"]
    ] == [True]
    alice.ok("DELETE", "/v1/functions/revoked")


def test_quotas_are_enforced_with_clear_errors(admin: Tenant, server: ServerProcess) -> None:
    small = new_tenant(admin, server, "small", max_sandboxes=1, max_sessions=1, max_memory_mb=1024)
    first = small.ok("POST", "/v1/sandboxes", json={"memory_mb": 256, "timeout_s": 60})["id"]
    second = small.http.post("/v1/sandboxes", json={"memory_mb": 256})
    assert second.status_code == 429 and "quota of 1 sandboxes" in second.json()["message"]
    small.ok("DELETE", f"/v1/sandboxes/{first}")
    big = small.http.post("/v1/sandboxes", json={"memory_mb": 2048})
    assert big.status_code == 429 and "memory" in big.json()["message"]
    assert deploy(small.http, "one", {"cmd": "python3 app.py", "memory_mb": 256}).status_code == 200
    assert small.http.get("/fn/one/whoami", headers={SESSION: "s1"}).status_code == 200
    over = small.http.get("/fn/one/whoami", headers={SESSION: "s2"})
    assert over.status_code == 429 and "session" in over.json()["message"]
    small.ok("DELETE", "/v1/functions/one")
    admin.ok("PATCH", "/v1/tenants/small", json={"quotas": {"max_rps": 2}})
    answers = [small.http.get("/v1/sandboxes").status_code for _ in range(8)]
    assert 429 in answers and answers[0] == 200
    limited = next(r for r in (small.http.get("/v1/sandboxes") for _ in range(4)) if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1


def test_patching_a_tenant_changes_only_the_quotas_it_names(admin: Tenant) -> None:
    """PATCH /v1/tenants/{name} merges: quotas left out keep their value, an explicit null makes
    one unlimited, a refused body (true is not a number) changes nothing."""
    admin.ok("POST", "/v1/tenants", json={"name": "patched", "quotas": {"max_sandboxes": 3, "max_rps": 50}})
    one = admin.ok("PATCH", "/v1/tenants/patched", json={"quotas": {"max_sessions": 7}})["quotas"]
    assert (one["max_sandboxes"], one["max_rps"], one["max_sessions"]) == (3, 50, 7)
    cleared = admin.ok("PATCH", "/v1/tenants/patched", json={"quotas": {"max_rps": None}})["quotas"]
    assert cleared == {**one, "max_rps": None}
    refused = admin.http.patch("/v1/tenants/patched", json={"quotas": {"max_sandboxes": True}})
    assert refused.status_code == 400 and "quotas.max_sandboxes" in refused.json()["message"]
    assert admin.ok("GET", "/v1/tenants/patched")["quotas"] == cleared
    admin.ok("DELETE", "/v1/tenants/patched")


def test_refused_requests_are_audited_as_who_asked_for_what(admin: Tenant, server: ServerProcess) -> None:
    """The audit log (read through /v1/audit) records a refused request truthfully: without a
    valid key (401) the actor is `anonymous` in no tenant; refused for its scope (403) or its
    tenant's rate (429), it is the key's id and tenant. The action is the route asked for, with
    its parameters, as for an accepted request."""
    admin.ok("POST", "/v1/tenants", json={"name": "audited", "quotas": {"max_rps": 1}})
    made = admin.ok("POST", "/v1/tenants/audited/keys", json={"scopes": ["functions:write"]})
    writer = Tenant(server.url, "audited", made["key"])
    assert httpx.delete(f"{server.url}/v1/sandboxes/sbx_anonymous").status_code == 401
    forged = {"x-api-key": "ac_nope_" + "n" * 32}
    timeout = f"{server.url}/v1/sandboxes/sbx_forged/timeout"
    assert httpx.post(timeout, headers=forged, json={"timeout_s": 5}).status_code == 401
    assert writer.http.delete("/v1/sandboxes/sbx_denied").status_code == 403  # no sandboxes:write
    answers = [writer.http.delete("/v1/functions/limited").status_code for _ in range(4)]
    assert 429 in answers, answers  # 1 request per second
    entries = admin.ok("GET", "/v1/audit", params={"limit": 1000})["entries"]
    seen = {(e["actor"], e["tenant"], e["action"], e["target"], e["status"]) for e in entries}
    assert {
        ("anonymous", "", "DELETE /v1/sandboxes/{sandbox_id}", "sandbox_id=sbx_anonymous", 401),
        ("anonymous", "", "POST /v1/sandboxes/{sandbox_id}/timeout", "sandbox_id=sbx_forged", 401),
        (made["id"], "audited", "DELETE /v1/sandboxes/{sandbox_id}", "sandbox_id=sbx_denied", 403),
        (made["id"], "audited", "DELETE /v1/functions/{name}", "name=limited", 429),
    } <= seen, sorted(seen)
    own = admin.ok("GET", "/v1/audit", params={"tenant": "audited"})["entries"]
    assert {e["status"] for e in own} >= {403, 429} and {e["actor"] for e in own} == {made["id"]}
    assert all(e["action"] != "(no route)" for e in entries if e["status"] in (401, 403, 429))
    admin.ok("DELETE", "/v1/tenants/audited")


def test_a_tenant_is_deleted_only_once_it_has_nothing_left(admin: Tenant, server: ServerProcess) -> None:
    """Deleting a tenant that still has a sandbox is a 409 naming what is left (it would run on,
    unowned, and a tenant made later under the same name would inherit it); once killed, 204."""
    carol = new_tenant(admin, server, "carol")
    sandbox = carol.ok("POST", "/v1/sandboxes", json={"timeout_s": 120})
    refused = admin.http.delete("/v1/tenants/carol")
    assert refused.status_code == 409, refused.text
    assert "still has 1 sandbox(es), live or paused; delete them first" in refused.json()["message"]
    metrics = admin.http.get("/metrics").text  # the node's gauges count every tenant's sandboxes
    assert any(line.startswith('agentcell_sandboxes{state="running"} ') for line in metrics.splitlines())
    carol.ok("DELETE", f"/v1/sandboxes/{sandbox['id']}")
    assert admin.http.delete("/v1/tenants/carol").status_code == 204
    assert carol.http.get("/v1/sandboxes").status_code == 401  # its keys went with it


def test_metrics_show_every_tenant_so_only_the_operator_s_keys_read_them(
    admin: Tenant, server: ServerProcess
) -> None:
    """/metrics is the whole server's (`function="acme.secretproj"`): another tenant's `*` key
    gets a 403 that says why and where its own figures are, and no tenant but the default one
    may be given metrics:read. The operator reads it with an admin key or a default-tenant key
    naming metrics:read (a scrape key good for nothing else). The audit log is admin-only too."""
    acme, beta = new_tenant(admin, server, "acme"), new_tenant(admin, server, "beta")
    assert deploy(acme.http, "secretproj", {"cmd": "python3 app.py"}).status_code == 200
    acme.ok("GET", "/fn/secretproj/whoami", headers={SESSION: "s"})
    for reader in (acme, beta):
        refused = reader.http.get("/metrics")
        assert refused.status_code == 403 and "secretproj" not in refused.text, refused.text
        assert "every tenant" in refused.json()["message"] and "/v1/usage" in refused.json()["message"]
        assert reader.http.get("/v1/audit").status_code == 403
    given = admin.http.post("/v1/tenants/beta/keys", json={"scopes": ["metrics:read"]})
    assert given.status_code == 400 and "metrics:read scope" in given.json()["message"], given.text
    made = admin.ok("POST", "/v1/tenants/default/keys", json={"scopes": ["metrics:read"], "name": "scrape"})
    scrape = Tenant(server.url, "default", made["key"])
    assert 'function="acme.secretproj"' in scrape.http.get("/metrics").text
    assert 'function="acme.secretproj"' in admin.http.get("/metrics").text
    assert scrape.http.get("/v1/sandboxes").status_code == 403
    star = admin.ok("POST", "/v1/tenants/default/keys", json={"scopes": ["*"]})["key"]
    assert Tenant(server.url, "default", star).http.get("/metrics").status_code == 403  # must be named
    acme.ok("DELETE", "/v1/functions/secretproj")
    own = acme.ok("GET", "/v1/usage", params={"by": "function"})["lines"]  # its own figures
    assert [line["function"] for line in own] == ["secretproj"], own


def test_a_deleted_tenant_s_name_is_not_given_again_and_its_usage_stays_for_admins(
    admin: Tenant, server: ServerProcess
) -> None:
    """Usage and audit history are kept by tenant name (billing needs them after a delete): a
    tenant made again under that name would inherit them, so the name is a 409 that says why;
    admin keys still read the deleted tenant's usage and audit entries by its name."""
    q = new_tenant(admin, server, "q")
    sandbox = q.ok("POST", "/v1/sandboxes", json={"timeout_s": 120})["id"]
    assert q.http.post(f"/v1/sandboxes/{sandbox}/commands", json={"cmd": "true"}).status_code == 200
    q.ok("DELETE", f"/v1/sandboxes/{sandbox}")
    billed = admin.ok("GET", "/v1/usage", params={"tenant": "q", "by": "sandbox"})["lines"]
    assert [line["sandbox_id"] for line in billed] == [sandbox]
    assert admin.http.delete("/v1/tenants/q").status_code == 204
    again = admin.http.post("/v1/tenants", json={"name": "q"})
    assert again.status_code == 409, again.text
    assert "'q' was used by a tenant deleted at" in again.json()["message"]
    assert admin.ok("GET", "/v1/usage", params={"tenant": "q", "by": "sandbox"})["lines"] == billed
    audited = admin.ok("GET", "/v1/audit", params={"tenant": "q"})["entries"]
    assert {e["action"] for e in audited} >= {"POST /v1/sandboxes", "DELETE /v1/sandboxes/{sandbox_id}"}
    assert "q" not in [t["name"] for t in admin.ok("GET", "/v1/tenants")["tenants"]]
    gone = admin.http.get("/v1/tenants/q")
    assert gone.status_code == 404 and "deleted at" in gone.json()["message"]
    assert admin.http.post("/v1/tenants/q/keys", json={"scopes": ["*"]}).status_code == 404
    assert admin.http.delete("/v1/tenants/q").status_code == 404
