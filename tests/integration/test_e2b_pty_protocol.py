"""envd's PTY messages on the wire, with raw HTTP against a real server: output comes as base64
`data.pty`, and malformed sizes, selectors and inputs get `invalid_argument`, never a 500."""

from __future__ import annotations

import base64

import httpx

from tests.integration.test_e2b_protocol import api, envelope, frames, sandbox, start

__all__ = ["api", "sandbox"]  # the fixtures, shared with the protocol tests


def test_pty_output_is_base64_pty_data(api: httpx.Client, sandbox: dict[str, str]) -> None:
    """A Start with a size runs on a terminal: its output is `data.pty` (with \\r\\n), and the end
    event carries the exit status."""
    request = {
        "process": {"cmd": "/bin/bash", "args": ["-c", "stty size; exit 4"]},
        "pty": {"size": {"rows": 7, "cols": 33}},
    }
    reply = start(api, sandbox, envelope(request))
    events = [message["event"] for _, message in frames(reply.content)[:-1]]
    data = [e["data"] for e in events if "data" in e]  # type: ignore[operator,index]
    assert data and all(set(d) == {"pty"} for d in data)
    assert b"".join(base64.b64decode(d["pty"]) for d in data) == b"7 33\r\n"
    assert events[-1]["end"]["exitCode"] == 4  # type: ignore[index]


def test_bad_sizes_and_inputs_are_invalid_arguments(api: httpx.Client, sandbox: dict[str, str]) -> None:
    for pty in ({}, {"size": {"rows": 24}}, {"size": {"rows": 24, "cols": 5000}}, {"size": "24x80"}):
        request = {"process": {"cmd": "/bin/bash"}, "pty": pty}
        [(_, end)] = frames(start(api, sandbox, envelope(request)).content)
        assert end["error"]["code"] == "invalid_argument", pty  # type: ignore[index]
    for method, body, expected in [
        ("Update", {"process": {"pid": 999999}, "pty": {"size": {"rows": 5, "cols": 5}}}, 404),
        ("Update", {"process": {"pid": 999999}, "pty": {"size": {"rows": 0, "cols": 5}}}, 400),
        ("Update", {"pty": {"size": {"rows": 5, "cols": 5}}}, 400),
    ]:
        reply = api.post(f"/process.Process/{method}", json=body, headers=sandbox)
        assert reply.status_code == expected, (body, reply.text)
        assert reply.json()["code"] == {400: "invalid_argument", 404: "not_found"}[expected]
    assert api.get("/health", headers=sandbox).status_code == 204
