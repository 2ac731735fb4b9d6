"""A hostile tenant on a server with AGENTCELL_AUTH=keys: tenant `ta` makes one of everything (a
sandbox with a background process, a terminal, a code context and a file; a paused sandbox; a
function with a session; an E2B sandbox); tenant `tb`, and a plain key of the default tenant, try
every surface on those ids and names — the REST API, the E2B-compatible API, the MCP server at
/mcp, lists with filters, the admin-only endpoints. Every attempt must answer like an unknown id
(or a 403 for an endpoint the key may not use at all), and nothing of `ta`'s may change."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.integration.conftest import deploy
from tests.integration.test_mcp import INIT as MCP_INIT
from tests.integration.test_mcp import JSON_AND_SSE

ADMIN_KEY = "ac_testhunt01_" + "k" * 32
SESSION = "x-agentcell-session-id"
FN_DOMAIN, E2B_DOMAIN = "fn.hunt.test", "sbx.hunt.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("hunt-tenants") / "state",
        env={
            "AGENTCELL_AUTH": "keys",
            "AGENTCELL_ADMIN_KEY": ADMIN_KEY,
            "AGENTCELL_FN_DOMAIN": FN_DOMAIN,
            "AGENTCELL_E2B_DOMAIN": E2B_DOMAIN,
        },
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60, headers={"x-api-key": ADMIN_KEY}) as client:
        yield client


def ok(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    reply = client.request(method, path, **kwargs)
    assert reply.status_code < 300, (method, path, reply.status_code, reply.text)
    return reply.json() if reply.content else None


def key_of(admin: httpx.Client, tenant: str, scopes: list[str]) -> dict[str, Any]:
    made: dict[str, Any] = ok(admin, "POST", f"/v1/tenants/{tenant}/keys", json={"scopes": scopes})
    return made


@pytest.fixture(scope="module")
def keys(admin: httpx.Client) -> dict[str, dict[str, Any]]:
    """ta (the victim), tb (the attacker) and dflt (a `*` key of the default tenant, not admin)."""
    for name in ("ta", "tb"):
        ok(admin, "POST", "/v1/tenants", json={"name": name})
    return {
        "ta": key_of(admin, "ta", ["*"]),
        "tb": key_of(admin, "tb", ["*"]),
        "dflt": key_of(admin, "default", ["*"]),
    }


@pytest.fixture(scope="module")
def clients(server: ServerProcess, keys: dict[str, dict[str, Any]]) -> Iterator[dict[str, httpx.Client]]:
    made = {
        name: httpx.Client(base_url=server.url, timeout=60, headers={"x-api-key": key["key"]})
        for name, key in keys.items()
    }
    yield made
    for client in made.values():
        client.close()


@dataclass
class Victim:
    sandbox: str
    process: str
    terminal: str
    context: str
    paused: str
    e2b: str
    e2b_token: str
    session: str
    expires_at: str


@pytest.fixture(scope="module")
def victim(clients: dict[str, httpx.Client]) -> Victim:
    ta = clients["ta"]
    sandbox = ok(ta, "POST", "/v1/sandboxes", json={"timeout_s": 600, "metadata": {"owner": "ta"}})
    sid = sandbox["id"]
    ok(ta, "PUT", f"/v1/sandboxes/{sid}/files", params={"path": "/home/user/secret.txt"}, content=b"ta's")
    process = ok(ta, "POST", f"/v1/sandboxes/{sid}/commands", json={"cmd": "sleep 600", "background": True})
    terminal = ok(
        ta,
        "POST",
        f"/v1/sandboxes/{sid}/commands",
        json={"cmd": "cat", "background": True, "pty": {"rows": 24, "cols": 80}, "timeout_s": None},
    )
    context = ok(ta, "POST", f"/v1/sandboxes/{sid}/code/contexts", json={"language": "bash"})
    paused = ok(ta, "POST", "/v1/sandboxes", json={"timeout_s": 600, "metadata": {"owner": "ta"}})["id"]
    ok(ta, "PUT", f"/v1/sandboxes/{paused}/files", params={"path": "/home/user/kept.txt"}, content=b"k")
    ok(ta, "POST", f"/v1/sandboxes/{paused}/pause")
    e2b = ok(
        ta, "POST", "/e2b/sandboxes", json={"templateID": "base", "timeout": 600, "metadata": {"o": "ta"}}
    )
    assert deploy(ta, "chat", {"cmd": "python3 app.py", "idle_timeout_s": 600}).status_code == 200
    session = ok(ta, "POST", "/v1/functions/chat/sessions", json={"key": "ta-1"})["id"]
    return Victim(
        sid,
        process["process_id"],
        terminal["process_id"],
        context["id"],
        paused,
        e2b["sandboxID"],
        e2b["envdAccessToken"],
        session,
        ok(ta, "GET", f"/v1/sandboxes/{sid}")["expires_at"],
    )


def assert_untouched(ta: httpx.Client, v: Victim) -> None:
    """Everything of ta's is as it made it."""
    sandbox = ok(ta, "GET", f"/v1/sandboxes/{v.sandbox}")
    assert (sandbox["state"], sandbox["expires_at"]) == ("running", v.expires_at), sandbox
    listed = ok(ta, "GET", f"/v1/sandboxes/{v.sandbox}/processes")["processes"]
    running = {p["process_id"] for p in listed if p["running"]}
    assert {v.process, v.terminal} <= running, listed
    secret = ta.get(f"/v1/sandboxes/{v.sandbox}/files", params={"path": "/home/user/secret.txt"})
    assert secret.content == b"ta's"
    assert ok(ta, "GET", f"/v1/sandboxes/{v.sandbox}/code/contexts/{v.context}")["id"] == v.context
    assert ok(ta, "GET", f"/v1/sandboxes/{v.paused}")["state"] == "paused"
    assert ok(ta, "GET", f"/e2b/sandboxes/{v.e2b}")["state"] == "running"
    assert ok(ta, "GET", f"/v1/sessions/{v.session}")["state"] in ("pending", "idle", "active")
    assert ok(ta, "GET", "/v1/functions/chat")["name"] == "chat"


def refused(client: httpx.Client, method: str, path: str, status: int, **kwargs: Any) -> str:
    reply = client.request(method, path, **kwargs)
    assert reply.status_code == status, (method, path, reply.status_code, reply.text)
    return reply.text


def unknown_like(real: str) -> str:
    """An id of the same shape as `real` that no one has (`sbx_…`, `ses_…`)."""
    prefix, _, rest = real.partition("_")
    return f"{prefix}_{'0' * len(rest)}"


def answer(client: httpx.Client, method: str, path: str, **kwargs: Any) -> tuple[int, str]:
    reply = client.request(method, path, **kwargs)
    try:
        message = reply.json().get("message", reply.text)
    except (ValueError, AttributeError):
        message = reply.text
    return reply.status_code, message


def like_unknown(
    client: httpx.Client, method: str, path: str, real: str, status: int = 404, **kwargs: Any
) -> str:
    """The request on another tenant's `real` id answers exactly as on an id no one has: the same
    status and message (a different one would tell the id exists)."""
    fake = unknown_like(real)
    foreign = answer(client, method, path.replace("{id}", real), **kwargs)
    unknown = answer(client, method, path.replace("{id}", fake), **kwargs)
    assert foreign[0] == status, (method, path, foreign)
    assert (foreign[0], foreign[1].replace(real, "{id}")) == (unknown[0], unknown[1].replace(fake, "{id}")), (
        method,
        path,
        foreign,
        unknown,
    )
    return foreign[1]


def test_rest_calls_on_another_tenant_s_sandbox_answer_like_an_unknown_one(
    clients: dict[str, httpx.Client], victim: Victim
) -> None:
    """Every sandbox route, on a running and on a paused sandbox of ta's: 404, the message of an
    unknown id (a 409 'paused' or a 'running' would tell it exists)."""
    tb, v = clients["tb"], victim
    for sid in (v.sandbox, v.paused, v.e2b):
        base = "/v1/sandboxes/{id}"
        attacks: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", base, {}),
            ("POST", f"{base}/timeout", {"json": {"timeout_s": 5}}),
            ("POST", f"{base}/pause", {}),
            ("POST", f"{base}/resume", {"json": {}}),
            ("POST", f"{base}/commands", {"json": {"cmd": "echo pwned > /home/user/secret.txt"}}),
            ("POST", f"{base}/commands", {"json": {"cmd": "true", "pty": {"rows": 2, "cols": 2}}}),
            ("GET", f"{base}/processes", {}),
            ("GET", f"{base}/processes/{v.process}/events", {}),
            ("POST", f"{base}/processes/{v.process}/stdin", {"json": {"data": "x"}}),
            ("POST", f"{base}/processes/{v.process}/signal", {"json": {"signal": "SIGKILL"}}),
            ("POST", f"{base}/processes/{v.terminal}/resize", {"json": {"rows": 5, "cols": 5}}),
            ("POST", f"{base}/code", {"json": {"code": "echo hi", "language": "bash"}}),
            ("POST", f"{base}/code/contexts", {"json": {"language": "bash"}}),
            ("GET", f"{base}/code/contexts", {}),
            ("GET", f"{base}/code/contexts/{v.context}", {}),
            ("POST", f"{base}/code/contexts/{v.context}/restart", {}),
            ("POST", f"{base}/code/contexts/{v.context}/interrupt", {}),
            ("DELETE", f"{base}/code/contexts/{v.context}", {}),
            ("GET", f"{base}/files", {"params": {"path": "/home/user/secret.txt"}}),
            ("PUT", f"{base}/files", {"params": {"path": "/home/user/secret.txt"}, "content": b"pwned"}),
            ("POST", f"{base}/files/upload", {"files": {"f": ("secret.txt", b"pwned")}}),
            ("GET", f"{base}/files/archive", {"params": {"path": "/home/user"}}),
            ("GET", f"{base}/files/stat", {"params": {"path": "/home/user/secret.txt"}}),
            ("GET", f"{base}/files/list", {"params": {"path": "/home/user"}}),
            ("POST", f"{base}/files/mkdir", {"json": {"path": "/home/user/x"}}),
            ("POST", f"{base}/files/rename", {"json": {"src": "/home/user/secret.txt", "dst": "/tmp/s"}}),
            ("DELETE", f"{base}/files", {"params": {"path": "/home/user/secret.txt"}}),
            ("DELETE", base, {}),
        ]
        for method, path, kwargs in attacks:
            like_unknown(tb, method, path, sid, **kwargs)
    own = ok(tb, "POST", "/v1/sandboxes", json={"timeout_s": 60})["id"]  # ta's ids in tb's own sandbox
    in_own: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/v1/sandboxes/{own}/processes/{v.process}/events", {}),
        ("POST", f"/v1/sandboxes/{own}/processes/{v.terminal}/signal", {"json": {"signal": "SIGKILL"}}),
        ("POST", f"/v1/sandboxes/{own}/processes/{v.terminal}/resize", {"json": {"rows": 5, "cols": 5}}),
        ("GET", f"/v1/sandboxes/{own}/code/contexts/{v.context}", {}),
        ("DELETE", f"/v1/sandboxes/{own}/code/contexts/{v.context}", {}),
        ("POST", f"/v1/sandboxes/{own}/code", {"json": {"code": "echo", "context_id": v.context}}),
    ]
    for method, path, kwargs in in_own:
        refused(tb, method, path, 404, **kwargs)
    ok(tb, "DELETE", f"/v1/sandboxes/{own}")
    mine = ok(tb, "GET", "/v1/sandboxes", params={"metadata": "owner=ta"})["sandboxes"]
    paused = ok(tb, "GET", "/v1/sandboxes", params={"state": "paused"})["sandboxes"]
    assert mine == [] and paused == []
    assert_untouched(clients["ta"], v)


def test_the_e2b_api_keeps_tenants_apart(clients: dict[str, httpx.Client], victim: Victim) -> None:
    """E2B's control plane with tb's key, on ta's running and paused sandboxes, and its lists
    with metadata filters; envd with tb's own sandbox's token on ta's sandbox."""
    tb, v = clients["tb"], victim
    for sid in (v.e2b, v.sandbox, v.paused):
        for method, path, body in [
            ("GET", "/e2b/sandboxes/{id}", None),
            ("POST", "/e2b/sandboxes/{id}/connect", {"timeout": 5}),
            ("POST", "/e2b/v2/sandboxes/{id}/connect", {"timeout": 5}),
            ("POST", "/e2b/sandboxes/{id}/resume", {"timeout": 5}),
            ("POST", "/e2b/sandboxes/{id}/timeout", {"timeout": 5}),
            ("POST", "/e2b/sandboxes/{id}/refreshes", None),
            ("POST", "/e2b/sandboxes/{id}/pause", None),
            ("GET", "/e2b/sandboxes/{id}/metrics", None),
            ("DELETE", "/e2b/sandboxes/{id}", None),
        ]:
            text = like_unknown(tb, method, path, sid, json=body)
            assert v.e2b_token not in text, (method, path, text)
    for path in ("/e2b/sandboxes", "/e2b/v2/sandboxes"):
        for query in ({}, {"metadata": "o=ta"}, {"metadata": "owner=ta"}, {"state": "paused"}):
            assert ok(tb, "GET", path, params=query) == [], (path, query)
    own = ok(tb, "POST", "/e2b/sandboxes", json={"templateID": "base", "timeout": 60})
    envd = {"e2b-sandbox-id": v.e2b, "x-access-token": own["envdAccessToken"]}
    listing = {**envd, "content-type": "application/json"}
    assert tb.post("/e2b/process.Process/List", headers=listing, content=b"{}").status_code == 401
    read = tb.get("/e2b/files", params={"path": "/home/user/secret.txt"}, headers=envd)
    assert read.status_code == 401 and b"ta's" not in read.content
    token = {"x-access-token": own["envdAccessToken"]}
    by_host = {**token, "host": f"49983-{v.e2b}.{E2B_DOMAIN}"}
    assert tb.get("/files", params={"path": "/home/user/secret.txt"}, headers=by_host).status_code == 401
    kernel = {**token, "host": f"49999-{v.e2b}.{E2B_DOMAIN}"}
    assert (
        tb.post("/execute", json={"code": "open('/home/user/secret.txt').read()"}, headers=kernel).status_code
        == 401
    )
    ok(tb, "DELETE", f"/e2b/sandboxes/{own['sandboxID']}")
    assert_untouched(clients["ta"], v)


def mcp_call(client: httpx.Client, session: dict[str, str], name: str, arguments: dict[str, Any]) -> Any:
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    reply = client.post("/mcp", json=call, headers=session)
    assert reply.status_code == 200, reply.text
    text = reply.text
    if reply.headers["content-type"].startswith("text/event-stream"):
        text = next(line[5:] for line in text.splitlines() if line.startswith("data:"))
    return json.loads(text)["result"]


def test_mcp_tools_act_on_the_key_s_own_tenant_only(clients: dict[str, httpx.Client], victim: Victim) -> None:
    """tb's own MCP session, naming ta's sandboxes in every tool: tool errors that say 'not found',
    and list_sandboxes shows none of them."""
    tb, v = clients["tb"], victim
    init = tb.post("/mcp", json=MCP_INIT, headers=JSON_AND_SSE)
    assert init.status_code == 200, init.text
    session = {
        **JSON_AND_SSE,
        "mcp-session-id": init.headers["mcp-session-id"],
        "mcp-protocol-version": "2025-11-25",
    }
    tb.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
    tools: list[tuple[str, dict[str, Any]]] = [
        ("run_command", {"command": "echo pwned > /home/user/secret.txt"}),
        ("run_code", {"code": "echo pwned", "language": "bash"}),
        ("read_file", {"path": "/home/user/secret.txt"}),
        ("write_file", {"path": "/home/user/secret.txt", "text": "pwned"}),
        ("list_files", {}),
        ("set_sandbox_timeout", {"timeout_s": 5}),
        ("kill_sandbox", {}),
    ]
    for sid in (v.sandbox, v.paused, v.e2b):
        for name, arguments in tools:
            result = mcp_call(tb, session, name, {"sandbox_id": sid, **arguments})
            assert result["isError"], (name, sid, result)
            fake = unknown_like(sid)
            unknown = mcp_call(tb, session, name, {"sandbox_id": fake, **arguments})
            said = result["content"][0]["text"]
            assert "not found" in said and said.replace(sid, "{id}") == unknown["content"][0]["text"].replace(
                fake, "{id}"
            ), (name, said, unknown)
    listed = mcp_call(tb, session, "list_sandboxes", {})
    assert not any(sid in json.dumps(listed) for sid in (v.sandbox, v.paused, v.e2b)), listed
    made = mcp_call(tb, session, "create_sandbox", {"timeout_s": 60})
    own = json.loads(made["content"][0]["text"])["id"]
    ok(tb, "DELETE", f"/v1/sandboxes/{own}")  # tb's: made for its tenant, not the server's
    assert clients["ta"].get(f"/v1/sandboxes/{own}").status_code == 404
    assert_untouched(clients["ta"], v)


def test_functions_and_sessions_of_another_tenant_are_not_found(
    clients: dict[str, httpx.Client], victim: Victim
) -> None:
    """By name and by id, through the API and the gateway; and the session lists' filters."""
    tb, v = clients["tb"], victim
    for method, path, body in [
        ("GET", "/v1/functions/chat", None),
        ("DELETE", "/v1/functions/chat", None),
        ("GET", "/v1/functions/chat/sessions", None),
        ("POST", "/v1/functions/chat/sessions", {"key": "tb-1"}),
    ]:
        assert "function 'chat' not found" in refused(tb, method, path, 404, json=body)
    by_id: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/v1/sessions/{id}", None),
        ("PATCH", "/v1/sessions/{id}", {"ttl_s": 5}),
        ("POST", "/v1/sessions/{id}/snapshot", None),
        ("DELETE", "/v1/sessions/{id}", None),
    ]
    for method, path, body in by_id:
        like_unknown(tb, method, path, v.session, json=body)
    assert tb.get("/fn/chat/whoami", headers={SESSION: "ta-1"}).status_code == 404
    on_host = {SESSION: "ta-1", "host": f"chat.{FN_DOMAIN}"}
    assert tb.get("/whoami", headers=on_host).status_code == 404
    assert ok(clients["ta"], "GET", "/whoami", headers=on_host)["instance"]  # ta's own reaches it
    unknown = refused(tb, "GET", "/v1/sessions", 404, params={"function": "chat"})
    assert "function 'chat' not found" in unknown
    assert ok(tb, "GET", "/v1/sessions", params={"metadata": []})["sessions"] == []
    assert ok(tb, "GET", "/v1/functions")["functions"] == []
    assert_untouched(clients["ta"], v)


def test_a_tenant_qualified_function_name_reaches_no_other_tenant(
    clients: dict[str, httpx.Client], victim: Victim
) -> None:
    """Inside the server ta's `chat` is `ta.chat`, and the default tenant's names are bare: a
    default-tenant key (no admin) naming `ta.chat` reached ta's function — read it, listed and
    made sessions on it (billed to ta), deleted it. A name with a dot is no function name: 404."""
    v = victim
    for client in (clients["dflt"], clients["tb"]):
        for method, path, body in [
            ("GET", "/v1/functions/ta.chat", None),
            ("GET", "/v1/functions/ta.chat/sessions", None),
            ("POST", "/v1/functions/ta.chat/sessions", {"key": "intruder"}),
            ("DELETE", "/v1/functions/ta.chat", None),
        ]:
            text = refused(client, method, path, 404, json=body)
            assert "function 'ta.chat' not found" in text, text
        listed = refused(client, "GET", "/v1/sessions", 404, params={"function": "ta.chat"})
        assert "function 'ta.chat' not found" in listed, listed
    keys = [s["key"] for s in ok(clients["ta"], "GET", "/v1/functions/chat/sessions")["sessions"]]
    assert keys == ["ta-1"], keys
    assert_untouched(clients["ta"], v)


def test_admin_only_endpoints_refuse_tenant_keys(
    admin: httpx.Client, keys: dict[str, dict[str, Any]], clients: dict[str, httpx.Client], victim: Victim
) -> None:
    """Tenants, keys, the audit log, metrics and template builds are the operator's: 403 for a
    `*` key of another tenant (which cannot, say, revoke ta's key or read its audit entries)."""
    tb, ta_key = clients["tb"], keys["ta"]["id"]
    for method, path, body in [
        ("GET", "/v1/tenants", None),
        ("POST", "/v1/tenants", {"name": "evil"}),
        ("GET", "/v1/tenants/ta", None),
        ("PATCH", "/v1/tenants/ta", {"quotas": {"max_sandboxes": 0}}),
        ("DELETE", "/v1/tenants/ta", None),
        ("GET", "/v1/tenants/ta/keys", None),
        ("POST", "/v1/tenants/ta/keys", {"scopes": ["*"]}),
        ("POST", "/v1/tenants/tb/keys", {"scopes": ["*"]}),
        ("DELETE", f"/v1/keys/{ta_key}", None),
        ("GET", "/v1/audit", None),
        ("GET", "/metrics", None),
        ("POST", "/v1/templates", {"name": "evil", "recipe": {"commands": ["true"]}}),
        ("DELETE", "/v1/templates/base", None),
    ]:
        refused(tb, method, path, 403, json=body)
    assert refused(tb, "GET", "/v1/usage", 403, params={"tenant": "ta"})
    assert ok(clients["ta"], "GET", "/v1/sandboxes")  # ta's key still works
    audit = ok(admin, "GET", "/v1/audit", params={"tenant": "ta", "limit": 1000})["entries"]
    assert audit and all(e["tenant"] == "ta" for e in audit)


def test_usage_is_billed_to_the_tenant_that_worked(clients: dict[str, httpx.Client], victim: Victim) -> None:
    """tb's usage holds none of ta's sandboxes or sessions, and ta's none of tb's; what tb's
    refused attempts on ta's things did is billed to nobody."""
    tb, ta, v = clients["tb"], clients["ta"], victim
    own = ok(tb, "POST", "/v1/sandboxes", json={"timeout_s": 60})["id"]
    assert tb.post(f"/v1/sandboxes/{own}/commands", json={"cmd": "true"}).status_code == 200
    ok(tb, "DELETE", f"/v1/sandboxes/{own}")
    since = {"since": "1970-01-01T00:00:00Z"}
    theirs = {v.sandbox, v.paused, v.e2b}
    tb_lines = ok(tb, "GET", "/v1/usage", params={"by": "sandbox", **since})["lines"]
    billed = {line["sandbox_id"] for line in tb_lines}
    assert own in billed and not billed & theirs, tb_lines
    assert all(
        line["function"] is None
        for line in ok(tb, "GET", "/v1/usage", params={"by": "function", **since})["lines"]
    )
    ta_lines = ok(ta, "GET", "/v1/usage", params={"by": "sandbox", **since})["lines"]
    assert own not in {line["sandbox_id"] for line in ta_lines} and theirs & {
        line["sandbox_id"] for line in ta_lines
    }
    for client in (tb, clients["dflt"]):
        sessions = ok(client, "GET", "/v1/usage", params={"by": "session", **since})["lines"]
        assert all(line["session_id"] != v.session and line["tenant"] != "ta" for line in sessions)
        rows = csv.reader(io.StringIO(client.get("/v1/usage", params={"format": "csv", **since}).text))
        assert not any("ta" in row or v.session in row for row in rows)
    assert ok(tb, "GET", "/v1/workspaces")["workspaces"] == []
    paused_path = f"ta/_sandboxes/{v.paused}"
    refused(tb, "GET", f"/v1/workspaces/{paused_path}", 404)
    refused(tb, "DELETE", f"/v1/workspaces/{paused_path}", 404)
    refused(tb, "GET", f"/v1/workspaces/tb/../{paused_path}", 404)
    assert_untouched(ta, v)


def test_a_read_only_key_gets_no_envd_token(
    server: ServerProcess, admin: httpx.Client, clients: dict[str, httpx.Client], victim: Victim
) -> None:
    """A `sandboxes:read` key may describe its tenant's E2B sandboxes, but the envd access token
    runs commands and writes files: describing one used to hand it over (read became write)."""
    reader = key_of(admin, "ta", ["sandboxes:read"])["key"]
    with httpx.Client(base_url=server.url, timeout=30, headers={"x-api-key": reader}) as client:
        described = ok(client, "GET", f"/e2b/sandboxes/{victim.e2b}")
        assert described["sandboxID"] == victim.e2b and described["state"] == "running"
        assert victim.e2b_token not in json.dumps(described), described
        assert all(victim.e2b_token not in json.dumps(s) for s in ok(client, "GET", "/e2b/v2/sandboxes"))
        refused(client, "POST", f"/e2b/sandboxes/{victim.e2b}/connect", 403, json={"timeout": 60})
    full = ok(clients["ta"], "GET", f"/e2b/sandboxes/{victim.e2b}")  # a write key's answer keeps it
    assert full["envdAccessToken"] == victim.e2b_token


def test_a_function_named_sessions_something_needs_the_functions_scope(
    server: ServerProcess, admin: httpx.Client, clients: dict[str, httpx.Client]
) -> None:
    """`/v1/functions/{name}/sessions…` needs a sessions scope; the check looked for `/sessions`
    anywhere in the path, so a `sessions:write` key could deploy and delete a function whose
    name starts with "sessions"."""
    ta = clients["ta"]
    assert deploy(ta, "sessions-bot", {"cmd": "python3 app.py"}).status_code == 200
    writer = key_of(admin, "ta", ["sessions:write"])["key"]
    with httpx.Client(base_url=server.url, timeout=30, headers={"x-api-key": writer}) as client:
        assert "functions:write" in refused(client, "DELETE", "/v1/functions/sessions-bot", 403)
        assert deploy(client, "sessions-new", {"cmd": "python3 app.py"}).status_code == 403
        assert "functions:read" in refused(client, "GET", "/v1/functions/sessionsbot", 403)
        assert client.get("/v1/functions/sessions-bot/sessions").status_code == 200  # its own scope
    assert ok(ta, "GET", "/v1/functions/sessions-bot")["name"] == "sessions-bot"
    ok(ta, "DELETE", "/v1/functions/sessions-bot")
