"""/v1/templates over HTTP on a real server: build with a streamed log, use, refuse, delete, restart."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, ServerFactory
from tests.integration.conftest import deploy
from tests.integration.test_api_input import assert_envelope
from tests.packages import tiny_wheel


@pytest.fixture
def api(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, base_url=server_url, timeout=60) as client:
        yield client


def wheel_recipe(value: int = 42) -> dict[str, object]:
    file_name, data = tiny_wheel(value=value)
    return {
        "files": [{"path": file_name, "content_b64": base64.b64encode(data).decode()}],
        "pip": ["acelltiny"],
        "pip_no_index": True,
    }


def build(
    api: httpx.Client, name: str, recipe: dict[str, object]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """POST the build, follow its NDJSON stream to the end; (build info, events)."""
    reply = api.post("/v1/templates", json={"name": name, "recipe": recipe, "description": "test"})
    assert reply.status_code == 202, reply.text
    info = reply.json()
    with api.stream("GET", f"/v1/template-builds/{info['id']}/events") as stream:
        assert stream.headers["content-type"] == "application/x-ndjson"
        events = [json.loads(line) for line in stream.iter_lines() if line.strip()]
    assert events[-1]["type"] == "end" and sum(e["type"] == "end" for e in events) == 1
    return info, events


def run(api: httpx.Client, sandbox_id: str, cmd: str) -> str:
    reply = api.post(f"/v1/sandboxes/{sandbox_id}/commands", json={"cmd": cmd})
    lines = [json.loads(line) for line in reply.text.splitlines()]
    return "".join(e["data"] for e in lines if e["type"] in ("stdout", "stderr"))


def test_build_stream_use_and_delete_a_template(api: httpx.Client) -> None:
    """Steps and output stream as NDJSON; the template then lists, starts sandboxes with its pip
    package importable, counts them, and is deleted only once none runs or waits to resume."""
    info, events = build(api, "api-tiny", wheel_recipe())
    steps = [e for e in events if e["type"] == "step"]
    assert [s["index"] for s in steps] == [1, 2] and steps[1]["name"] == "pip install acelltiny"
    assert "Successfully installed acelltiny-0.1" in "".join(e["data"] for e in events if e["type"] == "log")
    assert events[-1]["state"] == "ready" and events[-1]["template"]["name"] == "api-tiny"
    assert api.get(f"/v1/template-builds/{info['id']}").json()["state"] == "ready"
    names = [t["name"] for t in api.get("/v1/templates").json()["templates"]]
    assert names[0] == "base" and "api-tiny" in names

    sandbox = api.post("/v1/sandboxes", json={"template": "api-tiny", "timeout_s": 60}).json()
    try:
        assert sandbox["template"] == "api-tiny"
        assert run(api, sandbox["id"], "python3 -c 'import acelltiny; print(acelltiny.VALUE)'") == "42\n"
        assert api.get("/v1/templates/api-tiny").json()["instances"] == 1
        assert_envelope(api.delete("/v1/templates/api-tiny"), 409, "conflict", "1 running sandbox(es)")
        assert api.post(f"/v1/sandboxes/{sandbox['id']}/pause").status_code == 200
        needed = "needed by 1 paused sandbox(es) to resume"  # it could never resume without it
        assert_envelope(api.delete("/v1/templates/api-tiny"), 409, "conflict", needed)
    finally:
        api.delete(f"/v1/sandboxes/{sandbox['id']}")
    assert api.delete("/v1/templates/api-tiny").status_code == 204
    assert_envelope(api.get("/v1/templates/api-tiny"), 404, "not_found", "api-tiny")
    assert_envelope(api.post("/v1/sandboxes", json={"template": "api-tiny"}), 404, "not_found", "api-tiny")


def test_a_failing_step_fails_the_build_with_its_log_and_nothing_is_registered(api: httpx.Client) -> None:
    info, events = build(
        api, "api-broken", {"commands": ["echo partial > /opt/template/x", "echo boom >&2; exit 7"]}
    )
    end = events[-1]
    assert end["state"] == "failed" and "exited with 7" in end["error"] and "boom" in end["error"]
    assert any(e["type"] == "log" and e["stream"] == "stderr" and "boom" in e["data"] for e in events)
    build_info = api.get(f"/v1/template-builds/{info['id']}").json()
    assert build_info["state"] == "failed" and build_info["error"] == end["error"]
    assert_envelope(api.get("/v1/templates/api-broken"), 404, "not_found", "api-broken")
    assert "api-broken" not in [t["name"] for t in api.get("/v1/templates").json()["templates"]]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"name": "x", "recipe": {"pip": ["--index-url=http://evil"]}}, "recipe.pip.0"),
        ({"name": "x", "recipe": {"pip": ["ok; rm -rf /"]}}, "recipe.pip.0"),
        ({"name": "x", "recipe": {"apt": ["Bad_Name"]}}, "recipe.apt.0"),
        ({"name": "x", "recipe": {"npm": ["-g"]}}, "recipe.npm.0"),
        ({"name": "x", "recipe": {"commands": ["true"] * 33}}, "recipe.commands"),
        ({"name": "x", "recipe": {"commands": ["true"], "colour": "blue"}}, "recipe.colour"),
        ({"name": "x", "recipe": {"commands": ["true"]}, "colour": "blue"}, "colour"),
        ({"name": "x", "recipe": {}}, "at least one"),
        ({"name": "x", "recipe": {"pip": ["./missing.whl"]}}, "not among the recipe's files"),
        ({"name": "x", "recipe": {"files": [{"path": "../up", "content": ""}]}}, "'..'"),
        ({"name": "x", "recipe": {"files": [{"path": "/etc/passwd", "content": ""}]}}, "/opt/template/"),
        ({"name": "x", "recipe": {"files": [{"path": "a", "content_b64": "%%%"}]}}, "base64"),
        (
            {
                "name": "x",
                "recipe": {"files": [{"path": "a", "content": "x"}, {"path": "a", "content": "y"}]},
            },
            "files names a more than once",
        ),
        ({"name": "base", "recipe": {"commands": ["true"]}}, "cannot be built"),
        ({"name": "Bad Name", "recipe": {"commands": ["true"]}}, "name"),
        (
            {"name": "x", "recipe": {"commands": ["true"]}, "network": {"egress": "sideways"}},
            "network.egress",
        ),
    ],
)
def test_invalid_recipes_are_refused_with_400(
    api: httpx.Client, body: dict[str, object], needle: str
) -> None:
    assert_envelope(api.post("/v1/templates", json=body), 400, "invalid_argument", needle)


def test_unknown_names_are_404_and_base_cannot_be_deleted(api: httpx.Client) -> None:
    assert_envelope(api.post("/v1/sandboxes", json={"template": "nope"}), 404, "not_found", "'nope'", "base")
    assert_envelope(api.get("/v1/templates/nope"), 404, "not_found", "nope")
    assert_envelope(api.delete("/v1/templates/nope"), 404, "not_found", "nope")
    gone = "forgotten when the server restarts"  # builds live in memory (not "kept for a while")
    assert_envelope(api.get("/v1/template-builds/tpb_0"), 404, "not_found", "tpb_0", gone)
    assert_envelope(api.delete("/v1/templates/base"), 400, "invalid_argument", "base")
    assert api.get("/v1/templates/base").json()["name"] == "base"


def test_a_second_build_of_a_name_is_a_conflict(api: httpx.Client) -> None:
    reply = api.post("/v1/templates", json={"name": "api-twice", "recipe": {"commands": ["sleep 1"]}})
    assert reply.status_code == 202, reply.text
    assert_envelope(
        api.post("/v1/templates", json={"name": "api-twice", "recipe": {"commands": ["true"]}}),
        409,
        "conflict",
        "being built",
    )
    with api.stream("GET", f"/v1/template-builds/{reply.json()['id']}/events") as stream:
        assert json.loads(list(stream.iter_lines())[-1])["state"] == "ready"
    assert_envelope(
        api.post("/v1/templates", json={"name": "api-twice", "recipe": {"commands": ["true"]}}),
        409,
        "conflict",
        "delete it first",
    )
    assert api.delete("/v1/templates/api-twice").status_code == 204


def test_templates_survive_a_server_restart(server_factory: ServerFactory, tmp_path: Path) -> None:
    state = tmp_path / "restart-state"
    first = server_factory(state_dir=state)
    with httpx.Client(headers=AUTH, base_url=first.url, timeout=60) as api:
        _, events = build(api, "kept", wheel_recipe(value=7))
        assert events[-1]["state"] == "ready", events[-1]
    assert first.stop() == 0
    second = server_factory(state_dir=state)
    with httpx.Client(headers=AUTH, base_url=second.url, timeout=60) as api:
        assert api.get("/v1/templates/kept").json()["recipe"]["pip"] == ["acelltiny"]
        sandbox = api.post("/v1/sandboxes", json={"template": "kept", "timeout_s": 60}).json()
        assert run(api, sandbox["id"], "python3 -c 'import acelltiny; print(acelltiny.VALUE)'") == "7\n"
        api.delete(f"/v1/sandboxes/{sandbox['id']}")


def test_a_function_runs_on_its_template(api: httpx.Client) -> None:
    """Instances of a function naming a template see its layer and packages; the template cannot
    be deleted while they run; an unknown template is refused at deploy."""
    recipe = {**wheel_recipe(value=11), "commands": ["echo fn-layer > /opt/template/marker"]}
    _, events = build(api, "api-fn-tpl", recipe)
    assert events[-1]["state"] == "ready", events[-1]
    config = {"cmd": "python3 -c 'import acelltiny' && exec python3 app.py", "template": "api-fn-tpl"}
    assert_envelope(deploy(api, "tplfn", {**config, "template": "nope"}), 404, "not_found", "'nope'")
    reply = deploy(api, "tplfn", config)
    assert reply.status_code == 200, reply.text
    try:
        answer = api.get("/fn/tplfn/file", params={"path": "/opt/template/marker"})
        assert (answer.status_code, answer.json()) == (200, {"text": "fn-layer\n"})
        assert api.get("/v1/templates/api-fn-tpl").json()["instances"] == 1
        assert_envelope(api.delete("/v1/templates/api-fn-tpl"), 409, "conflict", "api-fn-tpl")
    finally:
        assert api.delete("/v1/functions/tplfn").status_code == 204
    assert api.delete("/v1/templates/api-fn-tpl").status_code == 204


SESSION = "x-agentcell-session-id"
MARKER = "/opt/template/marker"


def wait_unused(api: httpx.Client, template: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while api.get(f"/v1/templates/{template}").json()["instances"]:
        assert time.monotonic() < deadline, f"template {template} still in use after {timeout_s} s"
        time.sleep(0.1)


def test_a_deployed_function_keeps_its_template_after_scaling_to_zero(api: httpx.Client) -> None:
    """A function scaled to zero still starts instances from its template: deleting it is refused
    (409, naming the function of every tenant and what to do) until each is deleted or redeployed
    with another template; the redeployed function then runs on its new one."""
    _, events = build(api, "api-keep-tpl", {"commands": [f"echo kept > {MARKER}"]})
    assert events[-1]["state"] == "ready", events[-1]
    config = {
        "cmd": "python3 app.py",
        "template": "api-keep-tpl",
        "idle_timeout_s": 600,
        "workspace": {"persist": True, "sync_interval_s": 0},
    }
    assert api.post("/v1/tenants", json={"name": "tpltenant"}).status_code == 201
    key = api.post("/v1/tenants/tpltenant/keys", json={"scopes": ["*"]}).json()["key"]
    with httpx.Client(base_url=str(api.base_url), timeout=60, headers={"x-api-key": key}) as tenant:
        try:
            assert deploy(api, "keepfn", config).status_code == 200
            assert deploy(tenant, "tenantfn", config).status_code == 200
            answer = api.get("/fn/keepfn/file", params={"path": MARKER}, headers={SESSION: "one"})
            assert answer.json() == {"text": "kept\n"}
            session = api.get("/v1/functions/keepfn/sessions").json()["sessions"][0]
            assert api.delete(f"/v1/sessions/{session['id']}").status_code == 204
            wait_unused(api, "api-keep-tpl")  # scaled to zero

            refused = api.delete("/v1/templates/api-keep-tpl")
            assert_envelope(refused, 409, "conflict", "'keepfn'", "'tenantfn' (tenant tpltenant)", "redeploy")
            assert "running" not in refused.json()["message"]
            assert deploy(api, "keepfn", {**config, "template": "base"}).status_code == 200
            refused = api.delete("/v1/templates/api-keep-tpl")
            assert_envelope(refused, 409, "conflict", "'tenantfn' (tenant tpltenant)")
            assert "keepfn" not in refused.json()["message"]
        finally:
            tenant.delete("/v1/functions/tenantfn")
        assert api.delete("/v1/templates/api-keep-tpl").status_code == 204
        try:
            answer = api.get("/fn/keepfn/file", params={"path": MARKER}, headers={SESSION: "two"})
            assert answer.status_code == 404, answer.text  # version 2 starts, on base
        finally:
            assert api.delete("/v1/functions/keepfn").status_code == 204
    assert api.delete("/v1/tenants/tpltenant").status_code == 204
