"""Followers of one background process (clients reading its events) are capped: with no cap, and
each output event waking every follower to copy the whole buffer, 200 followers of one flooding
process made another sandbox's `echo hi` take 2.5 s instead of 15 ms (the cost per follower is
measured in bench/RESULTS.md, session 11). Real server, real sandboxes, real clients."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest

from agentcell.server.scheduler.processes import MAX_FOLLOWERS
from tests.conftest import AUTH, ServerProcess
from tests.integration.test_e2b_protocol import STREAM, envelope, frames

FLOOD = "while true; do echo line-of-output; done"
"""a process printing a line per write, as fast as its sandbox lets it"""


@pytest.fixture(scope="module")
def api(shared_server: ServerProcess) -> Iterator[httpx.Client]:
    limits = httpx.Limits(max_connections=MAX_FOLLOWERS + 8)
    with httpx.Client(base_url=shared_server.url, headers=AUTH, timeout=30, limits=limits) as client:
        yield client


def background(api: httpx.Client, sid: str, cmd: str) -> dict[str, object]:
    reply = api.post(f"/v1/sandboxes/{sid}/commands", json={"cmd": cmd, "background": True})
    assert reply.status_code == 201, reply.text
    info: dict[str, object] = reply.json()
    return info


def follow(api: httpx.Client, stack: contextlib.ExitStack, url: str) -> httpx.Response:
    return stack.enter_context(api.stream("GET", url))


def test_past_the_cap_a_follower_is_refused_until_one_leaves(api: httpx.Client, rest_sandbox: str) -> None:
    sandbox = rest_sandbox
    """The first MAX_FOLLOWERS followers stream; the next is a 429 `quota_exceeded` with
    Retry-After that says how many follow and what to do (E2B's Connect too, in its own shape:
    the cap counts both APIs' followers); once one disconnects, a new follower is accepted."""
    process = background(api, sandbox, "cat")
    url = f"/v1/sandboxes/{sandbox}/processes/{process['process_id']}/events"
    with contextlib.ExitStack() as stack:
        followers = [follow(api, stack, url) for _ in range(MAX_FOLLOWERS)]
        lines = [f.iter_lines() for f in followers]
        assert [f.status_code for f in followers] == [200] * MAX_FOLLOWERS
        assert all('"type":"start"' in next(it) for it in lines)

        refused = api.get(url)
        assert (refused.status_code, refused.headers.get("retry-after")) == (429, "1"), refused.text
        assert refused.json()["code"] == "quota_exceeded"
        message = refused.json()["message"]
        assert f"has {MAX_FOLLOWERS} followers" in message and "close one of those streams" in message

        connect = e2b_connect(api, sandbox, int(str(process["pid"])))
        assert connect.status_code == 200, connect.text  # Connect errors end the stream
        assert frames(connect.content)[-1][1]["error"]["code"] == "resource_exhausted"  # type: ignore[index]

        api.post(f"/v1/sandboxes/{sandbox}/processes/{process['process_id']}/stdin", json={"data": "hi\n"})
        assert all('"data":"hi\\n"' in next(it) for it in lines)  # the followers still stream

        followers[0].close()
        deadline = time.monotonic() + 10
        while not is_followable(api, url):  # as soon as the server has seen that client leave
            assert time.monotonic() < deadline, "a follower that left still holds its place"
            time.sleep(0.02)


def e2b_connect(api: httpx.Client, sid: str, pid: int) -> httpx.Response:
    """envd's Connect to the process, with the sandbox's envd token (from E2B's control plane)."""
    token = api.get(f"/e2b/sandboxes/{sid}").json()["envdAccessToken"]
    headers = {"E2b-Sandbox-Id": sid, "X-Access-Token": token, "Content-Type": STREAM}
    body = envelope({"process": {"pid": pid}})
    return api.post("/e2b/process.Process/Connect", content=body, headers=headers)


def is_followable(api: httpx.Client, url: str) -> bool:
    with api.stream("GET", url) as reply:
        return reply.status_code == 200
