"""E2B wire protocol edges, with raw HTTP against a real server: malformed Connect envelopes, wrong
codecs, unknown RPC methods, missing or wrong sandbox headers and tokens. Each gets the error
E2B's SDK maps to its own exception — never a 500 — and the server stays healthy."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping

import httpx
import pytest

from tests.conftest import AUTH, ServerProcess

STREAM = "application/connect+json"


def envelope(message: Mapping[str, object], flags: int = 0) -> bytes:
    data = json.dumps(message).encode()
    return struct.pack(">BI", flags, len(data)) + data


def frames(body: bytes) -> list[tuple[int, dict[str, object]]]:
    out, offset = [], 0
    while offset < len(body):
        flags, length = struct.unpack_from(">BI", body, offset)
        out.append((flags, json.loads(body[offset + 5 : offset + 5 + length])))
        offset += 5 + length
    return out


@pytest.fixture(scope="module")
def api(shared_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, base_url=f"{shared_server.url}/e2b", timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def sandbox(api: httpx.Client) -> Iterator[dict[str, str]]:
    created = api.post("/sandboxes", json={"templateID": "base", "timeout": 300})
    assert created.status_code == 201, created.text
    body = created.json()
    yield {"E2b-Sandbox-Id": body["sandboxID"], "X-Access-Token": body["envdAccessToken"]}
    api.delete(f"/sandboxes/{body['sandboxID']}")


def start(api: httpx.Client, headers: dict[str, str], body: bytes, **extra: str) -> httpx.Response:
    return api.post(
        "/process.Process/Start", content=body, headers={**headers, "Content-Type": STREAM, **extra}
    )


def test_a_command_streams_start_data_end_and_end_of_stream(
    api: httpx.Client, sandbox: dict[str, str]
) -> None:
    reply = start(
        api, sandbox, envelope({"process": {"cmd": "/bin/bash", "args": ["-c", "echo hi; exit 2"]}})
    )
    assert (reply.status_code, reply.headers["content-type"]) == (200, STREAM)
    got = frames(reply.content)
    assert "start" in got[0][1]["event"]  # type: ignore[operator]
    assert got[1][1] == {"event": {"data": {"stdout": "aGkK"}}}
    assert got[-2][1]["event"]["end"]["exitCode"] == 2  # type: ignore[index]
    assert got[-1] == (2, {})


@pytest.mark.parametrize(
    "body",
    [b"\x00\x00\x00", b"\x00\x00\x00\x10\x00{}", b"\x00\x00\x00\x00\x03[1]", envelope({}) + envelope({})],
    ids=["short-prefix", "length-past-body", "not-an-object", "two-messages"],
)
def test_malformed_envelopes_end_the_stream_with_invalid_argument(
    api: httpx.Client, sandbox: dict[str, str], body: bytes
) -> None:
    reply = start(api, sandbox, body)
    assert reply.status_code == 200
    [(flags, end)] = frames(reply.content)
    assert flags == 2 and end["error"]["code"] == "invalid_argument"  # type: ignore[index]


def test_compressed_envelope_is_refused(api: httpx.Client, sandbox: dict[str, str]) -> None:
    reply = start(api, sandbox, envelope({"process": {"cmd": "true"}}, flags=1))
    [(_, end)] = frames(reply.content)
    assert end["error"]["code"] == "internal"  # type: ignore[index]


def test_wrong_codecs_get_415(api: httpx.Client, sandbox: dict[str, str]) -> None:
    proto = api.post(
        "/filesystem.Filesystem/Stat",
        content=b"\x0a\x01/",
        headers={**sandbox, "Content-Type": "application/proto"},
    )
    assert proto.status_code == 415 and proto.json()["code"] == "internal"
    unary_as_stream = api.post("/process.Process/Start", json={"process": {"cmd": "true"}}, headers=sandbox)
    assert unary_as_stream.status_code == 415


def test_unknown_methods_and_bad_json(api: httpx.Client, sandbox: dict[str, str]) -> None:
    unknown = api.post("/process.Process/Explode", json={}, headers=sandbox)
    assert (unknown.status_code, unknown.json()["code"]) == (501, "unimplemented")
    no_process = api.post("/process.Process/Update", json={}, headers=sandbox)  # PTY resize
    assert (no_process.status_code, no_process.json()["code"]) == (400, "invalid_argument")
    bad = api.post(
        "/filesystem.Filesystem/Stat",
        content=b"{nope",
        headers={**sandbox, "Content-Type": "application/json"},
    )
    assert (bad.status_code, bad.json()["code"]) == (400, "invalid_argument")
    missing = api.post("/filesystem.Filesystem/Stat", json={"path": "/nope"}, headers=sandbox)
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    deadline = start(api, sandbox, envelope({"process": {"cmd": "true"}}), **{"Connect-Timeout-Ms": "soon"})
    assert frames(deadline.content)[-1][1]["error"]["code"] == "invalid_argument"  # type: ignore[index]


def test_sandbox_headers_and_tokens(api: httpx.Client, sandbox: dict[str, str]) -> None:
    no_header = api.post("/filesystem.Filesystem/Stat", json={"path": "/"})
    assert no_header.status_code == 404 and "E2b-Sandbox-Id" in no_header.json()["message"]
    wrong_token = api.post(
        "/filesystem.Filesystem/Stat", json={"path": "/"}, headers={**sandbox, "X-Access-Token": "x"}
    )
    assert (wrong_token.status_code, wrong_token.json()["code"]) == (401, "unauthenticated")
    gone = {"E2b-Sandbox-Id": "sbx_ffffffffffffffff", "X-Access-Token": "x"}
    for reply in (
        api.post("/filesystem.Filesystem/Stat", json={"path": "/"}, headers=gone),
        api.get("/files", params={"path": "/etc/hostname"}, headers=gone),
        api.get("/health", headers=gone),
    ):
        assert reply.status_code == 502 and "was not found" in reply.json()["message"]
    streamed = start(api, gone, envelope({"process": {"cmd": "true"}}))
    assert "was not found" in frames(streamed.content)[-1][1]["error"]["message"]  # type: ignore[index]
    other_port = api.get("/", headers={**sandbox, "E2b-Sandbox-Port": "8080"})
    assert other_port.status_code == 502 and "is not open" in other_port.json()["message"]


def test_control_plane_errors(api: httpx.Client, shared_server: ServerProcess) -> None:
    no_key = httpx.post(f"{shared_server.url}/e2b/v2/sandboxes", json={"templateID": "base"})
    assert no_key.status_code == 401
    bad = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": -1})
    assert bad.status_code == 400 and bad.json()["code"] == 400
    as_bool = api.post("/v2/sandboxes", json={"templateID": "base", "timeout": True})  # (was 1 s)
    assert as_bool.status_code == 400 and "not true or false" in as_bool.json()["message"]
    resuming = api.post("/v2/sandboxes", json={"templateID": "base", "autoResume": {"enabled": True}})
    assert resuming.status_code == 400 and "autoResume" in resuming.json()["message"]
    assert api.post("/sandboxes/sbx_ffffffffffffffff/pause").status_code == 404
    assert api.get("/sandboxes/sbx_ffffffffffffffff").json() == {
        "code": 404,
        "message": "sandbox 'sbx_ffffffffffffffff' not found (it may have ended)",
    }
    assert api.get("/v2/sandboxes", params={"nextToken": "garbage!"}).status_code == 400
    assert api.get("/v2/sandboxes", params={"state": "paused"}).json() == []


def test_server_is_healthy_afterwards(shared_server: ServerProcess) -> None:
    assert httpx.get(f"{shared_server.url}/healthz").json() == {"status": "ok"}


Parts = list[tuple[str, tuple[str | None, bytes]]]


def test_files_upload_writes_each_file_part_as_it_streams(api: httpx.Client, sandbox: dict[str, str]) -> None:
    """envd's multipart upload: `file` parts are written (each to its filename, or the one to
    ?path=), other fields skipped; mistakes are 400s that say what to send."""
    parts: Parts = [("note", (None, b"ignored")), ("file", ("up/a.txt", b"A")), ("file", ("up/b.txt", b"B"))]
    written = api.post("/files", files=parts, headers=sandbox)
    assert written.status_code == 200, written.text
    assert [e["path"] for e in written.json()] == ["/home/user/up/a.txt", "/home/user/up/b.txt"]
    one = api.post("/files", params={"path": "up/c.txt"}, files=[("file", ("x", b"C"))], headers=sandbox)
    assert (one.status_code, one.json()[0]["path"]) == (200, "/home/user/up/c.txt")
    read = api.get("/files", params={"path": "up/c.txt"}, headers=sandbox)
    assert read.content == b"C"
    mistakes: list[tuple[dict[str, str], Parts, str]] = [
        ({"path": "up/d.txt"}, [("file", ("x", b"1")), ("file", ("y", b"2"))], "one 'file' part with ?path="),
        ({}, [("note", (None, b"no file"))], "no 'file' part"),
    ]
    for params, files, needle in mistakes:
        reply = api.post("/files", params=params, files=files, headers=sandbox)
        assert reply.status_code == 400 and needle in reply.text, reply.text


def test_the_traffic_token_opens_ports_but_drives_neither_envd_nor_code(api: httpx.Client) -> None:
    """E2B's two tokens are two: whoever is given a sandbox's trafficAccessToken (to reach a web
    app on its ports) cannot run commands, read files or run code with it. The code
    interpreter's context calls take it, as E2B's SDK sends nothing else for them."""
    created = api.post("/sandboxes", json={"templateID": "base", "timeout": 120}).json()
    envd, traffic = created["envdAccessToken"], created["trafficAccessToken"]
    assert envd != traffic
    sid = {"E2b-Sandbox-Id": created["sandboxID"]}
    kernel = {**sid, "E2b-Sandbox-Port": "49999"}

    def stat(token: Mapping[str, str]) -> httpx.Response:
        return api.post("/filesystem.Filesystem/Stat", json={"path": "/"}, headers={**sid, **token})

    def execute(token: Mapping[str, str]) -> httpx.Response:
        return api.post("/execute", json={"code": "1"}, headers={**kernel, **token})

    try:
        for token in ({"E2B-Traffic-Access-Token": traffic}, {"X-Access-Token": traffic}):
            assert (stat(token).status_code, stat(token).json()["code"]) == (401, "unauthenticated")
            assert execute(token).status_code == 401, execute(token).text
        assert stat({"X-Access-Token": envd}).status_code == 200
        listed = api.get("/contexts", headers={**kernel, "E2B-Traffic-Access-Token": traffic})
        assert listed.status_code == 200, listed.text
        assert execute({"X-Access-Token": envd}).status_code == 200
    finally:
        api.delete(f"/sandboxes/{created['sandboxID']}")
