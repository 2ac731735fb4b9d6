"""Hostile input and resource abuse on the API, through the lean path (api/lean.py) and
FastAPI's: JSON the parser refuses with something other than a syntax error (nested past its
recursion limit, an integer of thousands of digits, bytes that are not UTF-8), floods of entries,
bodies past the limit on paths that merely end in `/files`, stalled large bodies, dates at the edge
of the range. Each is a 4xx (or a 503 to retry) with the envelope, never a 500, and never memory or
event-loop time without bound."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import AUTH, TEST_API_KEY, ServerFactory, ServerProcess
from tests.integration.conftest import FIXTURES, code_archive
from tests.integration.test_api_input import assert_envelope

MISSING_SANDBOX = "sbx_0000000000000000"
NOT_JSON = "the body is not valid JSON"
DEEP = b"[" * 100_000 + b"]" * 100_000  # past any recursion limit
DEEP_OBJECT = b'{"metadata":' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}"
HUGE_INT = b'{"timeout_s":' + b"9" * 5000 + b"}"  # past Python's int-from-string limit (4300 digits)
NOT_UTF8 = b'{"metadata":{"a":"\xff\xfe"}}'

# Every @lean route that takes a body: the lean path parses it before the endpoint looks at the
# ids, so unknown ones are enough.
LEAN_BODIES = [
    ("POST", "/v1/sandboxes"),
    ("POST", f"/v1/sandboxes/{MISSING_SANDBOX}/timeout"),
    ("POST", f"/v1/sandboxes/{MISSING_SANDBOX}/commands"),
    ("POST", f"/v1/sandboxes/{MISSING_SANDBOX}/processes/proc_nope/stdin"),
    ("POST", f"/v1/sandboxes/{MISSING_SANDBOX}/processes/proc_nope/signal"),
    ("PATCH", "/v1/sessions/ses_nope"),
]
FASTAPI_BODIES = [
    ("POST", "/v1/tenants"),
    ("POST", "/v1/templates"),
    ("POST", f"/v1/sandboxes/{MISSING_SANDBOX}/files/mkdir"),
]


@pytest.fixture(scope="module")
def api(shared_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, base_url=shared_server.url, timeout=30) as client:
        yield client


def send_json(api: httpx.Client, method: str, path: str, raw: bytes) -> httpx.Response:
    return api.request(method, path, content=raw, headers={"content-type": "application/json"})


@pytest.mark.parametrize(("method", "path"), LEAN_BODIES + FASTAPI_BODIES)
def test_json_nested_past_the_parsers_depth_is_a_400(api: httpx.Client, method: str, path: str) -> None:
    for raw in (DEEP, DEEP_OBJECT):
        reply = send_json(api, method, path, raw)
        assert_envelope(
            reply, 400, "invalid_argument", NOT_JSON, "recursion", "Content-Type: application/json"
        )


@pytest.mark.parametrize(("method", "path"), LEAN_BODIES[:2] + FASTAPI_BODIES[:1])
def test_json_the_parser_refuses_says_why(api: httpx.Client, method: str, path: str) -> None:
    """FastAPI's own answer was "There was an error parsing the body", which says nothing."""
    assert_envelope(send_json(api, method, path, HUGE_INT), 400, "invalid_argument", NOT_JSON, "4300 digits")
    assert_envelope(send_json(api, method, path, NOT_UTF8), 400, "invalid_argument", NOT_JSON, "utf-8")


def test_a_json_syntax_error_names_the_problem_and_where(api: httpx.Client) -> None:
    """Was "1: JSON decode error": the offset alone, as if it were a field."""
    reply = send_json(api, "POST", "/v1/tenants", b'{"name": "a",}')
    assert_envelope(reply, 400, "invalid_argument", NOT_JSON, "double quotes", "character 13")


def test_the_e2b_api_answers_deep_json_with_a_400(api: httpx.Client) -> None:
    """Its create is @lean too; the E2B error shape is {code, message}."""
    for path in ("/e2b/sandboxes", f"/e2b/sandboxes/{MISSING_SANDBOX}/timeout"):
        reply = send_json(api, "POST", path, DEEP)
        assert reply.status_code == 400, reply.text
        assert reply.json()["code"] == 400
        assert reply.json()["message"].startswith(NOT_JSON), reply.text  # not FastAPI's vague words


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/v1/sessions/files"),
        ("PATCH", "/v1/tenants/files"),
        ("POST", "/e2b/files"),  # no E2b-Sandbox-Id: the control API's, not envd's
        ("POST", "/e2b/sandboxes/files"),
    ],
)
def test_an_id_named_files_gets_no_exemption_from_the_body_limit(
    api: httpx.Client, method: str, path: str
) -> None:
    """Bodies to paths ending in `/files` skipped the JSON body limit, meant for file uploads: an
    id or name `files` made the lean path (or the E2B control API) read a body of any size into
    memory — 300 MB took the server from 0.1 to 1.1 GB."""
    huge = b'{"a":"' + b"x" * (40 << 20) + b'"}'
    reply = send_json(api, method, path, huge)
    assert reply.status_code == 413, reply.text[:300]
    if not path.startswith("/e2b"):
        assert_envelope(reply, 413, "payload_too_large", "larger than")


def test_envd_rpc_answers_deep_json_with_invalid_argument(api: httpx.Client) -> None:
    created = api.post("/e2b/sandboxes", json={"templateID": "base", "timeout": 60})
    assert created.status_code == 201, created.text
    sandbox = created.json()
    headers = {
        "e2b-sandbox-id": sandbox["sandboxID"],
        "x-access-token": sandbox.get("envdAccessToken") or "",
        "content-type": "application/json",
    }
    try:
        reply = api.post("/e2b/filesystem.Filesystem/Stat", content=DEEP, headers=headers)
        assert reply.status_code == 400, reply.text
        assert reply.json()["code"] == "invalid_argument"
    finally:
        api.delete(f"/e2b/sandboxes/{sandbox['sandboxID']}")


@pytest.mark.parametrize("config", [DEEP, HUGE_INT], ids=["deep", "huge-int"])
def test_a_deploy_whose_config_json_the_parser_refuses_is_a_400(api: httpx.Client, config: bytes) -> None:
    files = {"config": (None, config), "code": ("code.tar.gz", code_archive(FIXTURES / "echo_fn"))}
    reply = api.put("/v1/functions/hunt-bad-config", files=files)
    assert_envelope(reply, 400, "invalid_argument", "config is not valid JSON")
    assert api.get("/v1/functions/hunt-bad-config").status_code == 404


@pytest.mark.parametrize("path", ["/v1/tenants", "/v1/sandboxes"])
def test_an_oversized_chunked_body_is_413_on_fastapis_path_too(api: httpx.Client, path: str) -> None:
    """No Content-Length to refuse up front: the limit trips while FastAPI reads the body, and it
    wrapped that as a 400 "There was an error parsing the body"."""

    def chunks() -> Iterator[bytes]:
        yield b'{"name":"'
        for _ in range(40):
            yield b"x" * (1 << 20)
        yield b'"}'

    reply = api.post(path, content=chunks(), headers={"content-type": "application/json"})
    assert_envelope(reply, 413, "payload_too_large", "larger than")


def stalled_body(port: int, size: int) -> socket.socket:
    """A connection that sends a JSON body all but its last bytes, then stops."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nx-api-key: {TEST_API_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {size}\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"metadata":{"a":"' + b"x" * (size - 100))
    return sock


def large_body_status(api: httpx.Client, size: int) -> int:
    """A body the server reads whole and refuses (400) when it has room for it, else 503."""
    body = b'{"metadata":{"a":"' + b"x" * (size - 100) + b'"}}'
    return send_json(api, "POST", "/v1/sandboxes", body).status_code


def poll_status(api: httpx.Client, size: int, wanted: int) -> int:
    deadline = time.monotonic() + 30  # the server reads the stalled bodies as it gets to them
    while (status := large_body_status(api, size)) != wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    return status


def test_stalled_large_bodies_cannot_take_the_servers_memory(server_factory: ServerFactory) -> None:
    """Bodies are held whole until answered and a client may stall one for as long as it likes:
    past their first 64 KiB they share a budget of 8 of the largest (here 8 x 1 MiB); a body that
    would go over it is a 503, while small requests go on, and room comes back as they close."""
    size = 1 << 20
    server = server_factory(env={"AGENTCELL_MAX_JSON_BODY_BYTES": str(size)})
    with httpx.Client(headers=AUTH, base_url=server.url, timeout=30) as client:
        stalled = [stalled_body(server.port, size) for _ in range(10)]
        try:
            assert poll_status(client, size, 503) == 503
            reply = send_json(client, "POST", "/v1/sandboxes", b'{"metadata":{"a":"' + b"x" * 600 + b'"}}')
            assert_envelope(reply, 400, "invalid_argument", "metadata.a")  # small bodies go on
            refused = send_json(client, "POST", "/v1/sandboxes", b'{"a":"' + b"x" * (size - 100) + b'"}')
            assert_envelope(refused, 503, "unavailable", "large request bodies", "retry")
            assert refused.headers["retry-after"] == "1"
        finally:
            for sock in stalled:
                sock.close()
        assert poll_status(client, size, 400) == 400


def test_usage_until_the_first_day_of_year_one_is_a_400(api: httpx.Client) -> None:
    """The default window (a day before `until`) overflowed the datetime range: a 500."""
    for until in ("0001-01-01T00:00:00Z", "0001-01-01T12:00:00+14:00"):
        reply = api.get("/v1/usage", params={"until": until})
        assert_envelope(reply, 400, "invalid_argument", "until", "give since=")
    reply = api.get("/v1/usage", params={"since": "0001-01-01T00:00:00Z", "until": "0001-01-01T00:00:01Z"})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        (
            "/v1/sandboxes",
            {"metadata": {f"!{i}": "v" for i in range(100_000)}},
            "metadata: at most 64 entries",
        ),
        ("/v1/sandboxes", {"env": {f"1{i}": "v" for i in range(100_000)}}, "env: at most 256 entries"),
        (f"/v1/sandboxes/{MISSING_SANDBOX}/commands", {"argv": [0] * 100_000}, "argv: at most 4096 entries"),
        (
            "/v1/sandboxes",
            {f"k{i}": 1 for i in range(100_000)},
            "100000 fields given; this object takes only",
        ),
    ],
    ids=["metadata", "env", "argv", "fields"],
)
def test_a_flood_of_entries_is_refused_whole_not_item_by_item(
    api: httpx.Client, path: str, body: dict[str, object], needle: str
) -> None:
    """pydantic checks a dict's or list's max_length (and unknown fields) after validating every
    item: 1.5 million bad metadata keys (23 MB) were 1.5 million errors, ~30 s of the server's
    event loop and 2.8 GB to list them — every other client waited."""
    assert_envelope(api.post(path, json=body), 400, "invalid_argument", needle)


def test_files_past_the_json_limit_still_pass_on_every_file_route(api: httpx.Client) -> None:
    """The exemption from the JSON body limit, now matched whole, still covers every route that
    carries files: a sandbox file, an upload, and envd's /files named by the E2b-Sandbox-Id header."""
    data = b"\1" * ((32 << 20) + 1)
    created = api.post("/e2b/sandboxes", json={"templateID": "base", "timeout": 60})
    assert created.status_code == 201, created.text
    sandbox = created.json()
    sid = sandbox["sandboxID"]
    try:
        put = api.put(f"/v1/sandboxes/{sid}/files", params={"path": "/home/user/a.bin"}, content=data)
        assert put.status_code in (200, 201, 204), put.text
        upload = api.post(
            f"/v1/sandboxes/{sid}/files/upload", params={"dir": "/home/user"}, files={"f": ("b.bin", data)}
        )
        assert upload.status_code in (200, 201), upload.text
        envd = {"e2b-sandbox-id": sid, "x-access-token": sandbox.get("envdAccessToken") or ""}
        e2b = api.post("/e2b/files", params={"path": "/home/user/c.bin"}, files={"file": data}, headers=envd)
        assert e2b.status_code == 200, e2b.text
        listed = api.get(f"/v1/sandboxes/{sid}/files/list", params={"path": "/home/user"}).json()
        sizes = {entry["name"]: entry["size"] for entry in listed["entries"]}
        assert {sizes.get(name) for name in ("a.bin", "b.bin", "c.bin")} == {len(data)}
    finally:
        api.delete(f"/e2b/sandboxes/{sid}")
