"""Bad input on every sandbox endpoint: a 4xx envelope that says what to change, nothing half-made."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH
from tests.integration.conftest import deploy


@pytest.fixture
def api(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, base_url=server_url, timeout=30) as client:
        yield client


@pytest.fixture
def sandbox_id(api: httpx.Client) -> Iterator[str]:
    reply = api.post("/v1/sandboxes", json={"timeout_s": 120, "metadata": {"suite": "input"}})
    assert reply.status_code == 201, reply.text
    sid: str = reply.json()["id"]
    yield sid
    api.delete(f"/v1/sandboxes/{sid}")


def assert_envelope(reply: httpx.Response, status: int, code: str, *needles: str) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"code", "message", "request_id"}
    assert body["code"] == code
    assert body["request_id"] == reply.headers["x-request-id"]
    for needle in needles:
        assert needle in body["message"], body["message"]


def count_sandboxes(api: httpx.Client) -> int:
    return len(api.get("/v1/sandboxes").json()["sandboxes"])


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"memory_mb": 0}, "memory_mb"),
        ({"memory_mb": -5}, "memory_mb"),
        ({"memory_mb": 10**12}, "memory_mb"),
        ({"cpu": "lots"}, "cpu"),
        ({"cpu": 0.001}, "cpu: Input should be greater than or equal to 0.01"),
        ({"disk_mb": 1}, "disk_mb"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": 10**9}, "timeout_s"),
        ({"template": "../etc"}, "template"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"env": {"A": "a\u0000b"}}, "env.A: may not contain a NUL character"),
        ({"metadata": "not-a-dict"}, "metadata"),
        ({"colour": "blue"}, "colour"),
        ({"timeout_s": True}, "timeout_s: must be a number"),  # not 1
        ({"cpu": False}, "cpu: must be a number"),
        ({"memory_mb": True}, "memory_mb: must be a number"),
    ],
)
def test_create_refuses_bad_fields_and_makes_nothing(
    api: httpx.Client, body: dict[str, object], needle: str
) -> None:
    before = count_sandboxes(api)
    assert_envelope(api.post("/v1/sandboxes", json=body), 400, "invalid_argument", needle)
    assert count_sandboxes(api) == before


def test_booleans_are_not_numbers_anywhere(api: httpx.Client, sandbox_id: str) -> None:
    """JSON true/false where a request model wants a number is a 400 naming the field (pydantic's
    lax mode would read them as 1 and 0): commands, renewals, a function's config."""
    commands = f"/v1/sandboxes/{sandbox_id}/commands"
    for url, body, field in (
        (commands, {"cmd": "true", "timeout_s": True}, "timeout_s"),
        (commands, {"cmd": "true", "pty": {"rows": True, "cols": 80}}, "pty.rows"),
        (f"/v1/sandboxes/{sandbox_id}/timeout", {"timeout_s": True}, "timeout_s"),
    ):
        assert_envelope(api.post(url, json=body), 400, "invalid_argument", f"{field}: must be a number")
    name = "bool-numbers"
    for config, field in (
        ({"cmd": "python3 app.py", "min_warm": True}, "min_warm"),
        ({"cmd": "python3 app.py", "cpu": True}, "cpu"),
        ({"cmd": "python3 app.py", "workspace": {"persist": True, "keep": False}}, "workspace.keep"),
    ):
        reply = deploy(api, name, config)
        if reply.status_code == 200:  # deployed on 1 (or 0): take it away before failing
            api.delete(f"/v1/functions/{name}")
        assert_envelope(reply, 400, "invalid_argument", f"config: {field}: must be a number")
    assert api.get(f"/v1/functions/{name}").status_code == 404


def test_unknown_template_names_the_choices(api: httpx.Client) -> None:
    assert_envelope(api.post("/v1/sandboxes", json={"template": "nope"}), 404, "not_found", "'nope'", "base")


def test_malformed_json_and_wrong_body_type(api: httpx.Client) -> None:
    reply = api.post("/v1/sandboxes", content=b"{not json", headers={"content-type": "application/json"})
    assert_envelope(reply, 400, "invalid_argument")
    assert_envelope(api.post("/v1/sandboxes", json=[1, 2]), 400, "invalid_argument")


def test_oversized_json_body_is_413(api: httpx.Client) -> None:
    huge = json.dumps({"metadata": {"k": "x" * (40 << 20)}})
    reply = api.post("/v1/sandboxes", content=huge, headers={"content-type": "application/json"})
    assert_envelope(reply, 413, "payload_too_large", "files API")


def test_unknown_ids_answer_404_everywhere(api: httpx.Client) -> None:
    missing = "sbx_0000000000000000"
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/v1/sandboxes/{missing}", {}),
        ("DELETE", f"/v1/sandboxes/{missing}", {}),
        ("POST", f"/v1/sandboxes/{missing}/timeout", {"json": {"timeout_s": 5}}),
        ("POST", f"/v1/sandboxes/{missing}/commands", {"json": {"cmd": "true"}}),
        ("GET", f"/v1/sandboxes/{missing}/processes", {}),
        ("GET", f"/v1/sandboxes/{missing}/files", {"params": {"path": "a"}}),
        ("GET", f"/v1/sandboxes/{missing}/files/list", {"params": {"path": "/"}}),
    ]
    for method, path, kwargs in cases:
        assert_envelope(api.request(method, path, **kwargs), 404, "not_found", "not found")


def test_unknown_route_and_method(api: httpx.Client) -> None:
    assert_envelope(api.get("/v1/nothing-here"), 404, "not_found", "/openapi.json")
    assert_envelope(api.put("/v1/sandboxes"), 405, "invalid_argument", "PUT")


def test_command_input_is_checked(api: httpx.Client, sandbox_id: str) -> None:
    url = f"/v1/sandboxes/{sandbox_id}/commands"
    assert_envelope(api.post(url, json={}), 400, "invalid_argument", "exactly one")
    assert_envelope(api.post(url, json={"cmd": "x", "argv": ["x"]}), 400, "invalid_argument", "exactly one")
    assert_envelope(api.post(url, json={"cmd": "x", "timeout_s": -1}), 400, "invalid_argument", "timeout_s")
    assert_envelope(api.post(url, json={"cmd": "x", "user": "root"}), 400, "invalid_argument", "user")
    assert_envelope(api.post(url, json={"argv": "ls"}), 400, "invalid_argument", "argv")
    nul = "may not contain a NUL character"
    for field, body in (
        ("cwd", {"cmd": "pwd", "cwd": "/tmp\u0000x"}),
        ("env.A", {"cmd": "true", "env": {"A": "a\u0000b"}}),
        ("argv.1", {"argv": ["echo", "a\u0000"]}),
        ("cmd", {"cmd": "echo \u0000"}),
    ):
        assert_envelope(api.post(url, json=body), 400, "invalid_argument", f"{field}: {nul}")
    assert_envelope(api.get(f"/v1/sandboxes/{sandbox_id}/processes/proc_nope/events"), 404, "not_found")
    signal_url = f"/v1/sandboxes/{sandbox_id}/processes/proc_nope/signal"
    assert_envelope(api.post(signal_url, json={"signal": "SIGBOGUS"}), 400, "invalid_argument", "signal")


def test_file_paths_are_checked(api: httpx.Client, sandbox_id: str) -> None:
    base = f"/v1/sandboxes/{sandbox_id}/files"
    assert_envelope(api.get(base, params={"path": "../../etc/passwd"}), 400, "invalid_argument", "..")
    assert_envelope(
        api.put(base, params={"path": "/home/user/../../x"}, content=b"x"), 400, "invalid_argument"
    )
    assert_envelope(api.get(base, params={"path": "/home/user/missing"}), 404, "not_found")
    assert_envelope(api.get(base), 400, "invalid_argument", "path")
    assert_envelope(
        api.get(base + "/list", params={"path": "/", "depth": 0}), 400, "invalid_argument", "depth"
    )
    assert_envelope(
        api.get(base + "/list", params={"path": "/", "depth": "x"}), 400, "invalid_argument", "depth"
    )
    assert_envelope(api.post(base + "/upload", content=b"x"), 400, "invalid_argument", "multipart")
    assert_envelope(api.post(base + "/rename", json={"src": "a"}), 400, "invalid_argument", "dst")


def test_renew_and_list_filter(api: httpx.Client, sandbox_id: str) -> None:
    reply = api.post(f"/v1/sandboxes/{sandbox_id}/timeout", json={"timeout_s": 600})
    assert reply.status_code == 200
    assert_envelope(
        api.post(f"/v1/sandboxes/{sandbox_id}/timeout", json={"timeout_s": 0}), 400, "invalid_argument"
    )
    ids = [s["id"] for s in api.get("/v1/sandboxes", params={"metadata": "suite=input"}).json()["sandboxes"]]
    assert sandbox_id in ids
    assert api.get("/v1/sandboxes", params={"metadata": "suite=other"}).json()["sandboxes"] == []
    assert_envelope(
        api.get("/v1/sandboxes", params={"metadata": "novalue"}), 400, "invalid_argument", "key=value"
    )


def test_openapi_document_lists_the_routes(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert {
        "/v1/sandboxes",
        "/v1/sandboxes/{sandbox_id}/commands",
        "/v1/sandboxes/{sandbox_id}/files",
    } <= set(paths)


def test_an_answer_before_the_body_was_read_keeps_the_next_request_working(api: httpx.Client) -> None:
    """A 401 answered before a 4 MiB body was read: the connection is closed and says so, so the
    client's next request goes on a fresh one instead of failing on a dead pooled connection."""
    refused = api.post("/v1/sandboxes", content=b"x" * (4 << 20), headers={"x-api-key": "ac_bad_key"})
    assert refused.status_code == 401
    assert refused.headers.get("connection") == "close"
    assert api.get("/v1/sandboxes").status_code == 200
