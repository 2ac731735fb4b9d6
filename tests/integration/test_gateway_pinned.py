"""A client connection pinned to a warm session (`router.WarmPin`) on the real server: every
request on it is still routed by its own inputs, and whatever ended or changed behind the pin
(the session, the function's deploy, the instance) is seen by the very next request.

Each test speaks over one keep-alive connection (`max_connections=1`) and sends a key at least
three times in a row: the first request binds the session, the second (the warm path) pins the
connection, the third and later go through the pin."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import AUTH
from tests.integration.conftest import deploy
from tests.unit.test_metrics import parse

ECHO = {"cmd": "python3 app.py", "idle_timeout_s": 600}
SESSION = "x-agentcell-session-id"
FIRST_BYTE = 'agentcell_start_phase_duration_seconds_count{phase="first_byte"}'


@pytest.fixture
def one_connection(server_url: str) -> Iterator[httpx.Client]:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    with httpx.Client(base_url=server_url, timeout=60, headers=AUTH, limits=limits) as client:
        yield client


@pytest.fixture
def fn(api: httpx.Client) -> Iterator[str]:
    name = "pin-" + uuid.uuid4().hex[:8]
    reply = deploy(api, name, ECHO)
    assert reply.status_code == 200, reply.text
    yield name
    api.delete(f"/v1/functions/{name}")


def whoami(client: httpx.Client, fn: str, key: str, header: str = SESSION) -> httpx.Response:
    return client.get(f"/fn/{fn}/whoami", headers={header: key})


def test_each_request_on_a_pinned_connection_reaches_its_own_session(
    one_connection: httpx.Client, fn: str
) -> None:
    """Keys change under a pin in every way a client may change them: another key, a key then
    back, the same key on another path, another method."""
    instances: dict[str, set[str]] = {"alice": set(), "bob": set()}
    for key in ("alice",) * 4 + ("bob",) * 4 + ("alice", "bob") * 3 + ("alice",) * 3:
        reply = whoami(one_connection, fn, key)
        assert reply.status_code == 200, reply.text
        instances[key].add(reply.json()["instance"])
    assert len(instances["alice"]) == len(instances["bob"]) == 1
    assert instances["alice"] != instances["bob"]
    echoed = one_connection.post(f"/fn/{fn}/echo", content=b"x" * 10, headers={SESSION: "alice"})
    assert echoed.status_code == 200 and echoed.json()["bytes"] == 10
    assert whoami(one_connection, fn, "alice").json()["instance"] in instances["alice"]
    assert whoami(one_connection, fn, "bob").json()["instance"] in instances["bob"]


def test_a_pinned_connection_follows_the_path_to_its_function_and_route(
    one_connection: httpx.Client, api: httpx.Client, fn: str
) -> None:
    """The pin holds for other paths of the same function (each reaches the instance as sent, its
    `/fn/{name}` removed), and not for another function's path, nor for one whose name merely
    starts with the pinned one's."""
    mine = {whoami(one_connection, fn, "p1").json()["instance"] for _ in range(3)}
    for path in ("/whoami", "/whoami?x=1", "", "/", "/whoami", "/nope/deeper"):
        reply = one_connection.get(f"/fn/{fn}{path}", headers={SESSION: "p1"})
        assert reply.json()["path"] == (path or "/"), reply.text  # (404 for all but /whoami)
        assert reply.status_code == 200 if path.startswith("/whoami") else 404
        if reply.status_code == 200:
            assert reply.json()["instance"] in mine
    other = fn + "x"
    assert deploy(api, other, ECHO).status_code == 200
    try:
        for _ in range(3):
            theirs = whoami(one_connection, other, "p1")
            assert theirs.status_code == 200 and theirs.json()["instance"] not in mine, theirs.text
        assert whoami(one_connection, fn, "p1").json()["instance"] in mine
    finally:
        api.delete(f"/v1/functions/{other}")


def test_a_deleted_session_is_never_reached_through_the_pin(
    one_connection: httpx.Client, api: httpx.Client, fn: str
) -> None:
    """Its exclusive instance is destroyed with it: the next request of the key starts afresh."""
    before = [whoami(one_connection, fn, "gone").json() for _ in range(3)]
    assert len({b["instance"] for b in before}) == 1
    sessions = api.get(f"/v1/functions/{fn}/sessions").json()["sessions"]
    session = next(s for s in sessions if s["key"] == "gone")
    assert api.delete(f"/v1/sessions/{session['id']}").status_code == 204
    after = whoami(one_connection, fn, "gone")
    assert after.status_code == 200, after.text
    assert after.json()["instance"] != before[0]["instance"] and after.json()["count"] == 1


def test_a_redeploy_that_changes_the_affinity_header_is_followed_at_once(
    one_connection: httpx.Client, api: httpx.Client, fn: str
) -> None:
    """Behind the pin the function now reads its key from another header: the old header is just
    a header, so the request has no key and gets a new session, with its key given back."""
    first = {whoami(one_connection, fn, "k1").json()["instance"] for _ in range(3)}
    assert deploy(api, fn, {**ECHO, "affinity": {"kind": "header", "header": "x-user"}}).status_code == 200
    reply = whoami(one_connection, fn, "k1")
    assert reply.status_code == 200, reply.text
    issued = reply.headers.get("x-user")
    assert issued is not None and issued.startswith("ses_"), reply.headers
    assert reply.json()["instance"] not in first
    assert whoami(one_connection, fn, issued, header="x-user").json()["instance"] == reply.json()["instance"]


def test_an_instance_that_died_is_never_reached_through_the_pin(
    one_connection: httpx.Client, api: httpx.Client, fn: str
) -> None:
    """Its session ends (instance_failed) and the key's next request starts a new one. (The crash
    is asked for on another connection: the pinned one's next request is the same as before.)"""
    answers = [whoami(one_connection, fn, "dies").json() for _ in range(3)]
    first = answers[0]
    assert len({a["instance"] for a in answers}) == 1
    crashed = api.get(f"/fn/{fn}/crash", headers={SESSION: "dies"})
    assert crashed.status_code in (200, 502), crashed.text
    session = f"/v1/functions/{fn}/sessions"
    deadline = time.monotonic() + 10
    while any(s["key"] == "dies" for s in api.get(session).json()["sessions"]):
        assert time.monotonic() < deadline, "the session outlived its instance"
        time.sleep(0.05)
    again = whoami(one_connection, fn, "dies")
    assert again.status_code == 200 and again.json()["instance"] != first["instance"], again.text


# -- a stateless function's pin (`affinity: none`): the routing is kept, the instance picked anew


@pytest.fixture
def stateless(api: httpx.Client) -> Iterator[str]:
    """One instance taking one request at a time: whether it has room is always plain."""
    name = "pinfree-" + uuid.uuid4().hex[:8]
    config = {**ECHO, "affinity": {"kind": "none"}, "concurrency_per_instance": 1, "max_instances": 1}
    reply = deploy(api, name, config)
    assert reply.status_code == 200, reply.text
    yield name
    api.delete(f"/v1/functions/{name}")


def test_a_stateless_pin_never_reaches_an_instance_without_room(
    one_connection: httpx.Client, api: httpx.Client, server_url: str, stateless: str
) -> None:
    """While another client's stream holds the instance's one place, the pinned connection's
    request is not sent to it through the pin: it waits its turn on the awaiting route (which
    alone records the `first_byte` phase), and is answered by the same instance afterwards."""
    first = {one_connection.get(f"/fn/{stateless}/whoami").json()["instance"] for _ in range(3)}
    assert len(first) == 1
    before = parse(api.get("/metrics").text).get(FIRST_BYTE, 0)
    with (
        httpx.Client(base_url=server_url, headers=AUTH, timeout=60) as other,
        other.stream("GET", f"/fn/{stateless}/sse") as stream,
    ):
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data")), "no first event"
        reply = one_connection.get(f"/fn/{stateless}/whoami")  # (the stream is still on its way)
        assert sum(line.startswith("data") for line in lines) == 2
    assert reply.status_code == 200 and reply.json()["instance"] in first, reply.text
    assert parse(api.get("/metrics").text)[FIRST_BYTE] == before + 1


def test_a_stateless_pin_follows_a_redeploy_at_once(
    one_connection: httpx.Client, api: httpx.Client, stateless: str
) -> None:
    """The old version's instance takes no new request: the pinned connection's next one starts
    on the new version, as a new connection's would."""
    first = {one_connection.get(f"/fn/{stateless}/whoami").json()["instance"] for _ in range(3)}
    config = {**ECHO, "affinity": {"kind": "none"}, "env": {"VERSION": "2"}}
    assert deploy(api, stateless, config).status_code == 200
    after = one_connection.get(f"/fn/{stateless}/whoami")
    assert after.status_code == 200 and after.json()["instance"] not in first, after.text
    fresh = api.get(f"/fn/{stateless}/whoami")
    assert fresh.json()["instance"] == after.json()["instance"]


def test_a_stateless_pin_moves_with_the_pick_and_keeps_each_path(
    one_connection: httpx.Client, api: httpx.Client, server_url: str
) -> None:
    """Two warm instances, one request each at a time: the pinned connection's instance (the
    first, the pick when both are idle) is taken by another client's stream, so its next request
    is picked the other one, and so is the one after it, each reaching its own path."""
    name = "pinmove-" + uuid.uuid4().hex[:8]
    config = {**ECHO, "affinity": {"kind": "none"}, "concurrency_per_instance": 1}
    assert deploy(api, name, {**config, "max_instances": 2, "min_warm": 2}).status_code == 200
    try:
        deadline = time.monotonic() + 30
        while api.get(f"/v1/functions/{name}").json()["warm_instances"] < 2:
            assert time.monotonic() < deadline, "the two warm instances never came up"
            time.sleep(0.05)
        pinned = {one_connection.get(f"/fn/{name}/whoami").json()["instance"] for _ in range(3)}
        with (
            httpx.Client(base_url=server_url, headers=AUTH, timeout=60) as other,
            other.stream("GET", f"/fn/{name}/sse") as stream,
        ):
            lines = stream.iter_lines()  # (held: a dropped iterator would close the stream)
            assert next(line for line in lines if line.startswith("data")), "no first event"
            moved = [one_connection.get(f"/fn/{name}/whoami", params={"n": "2"}).json() for _ in range(2)]
            assert sum(line.startswith("data") for line in lines) == 2
        assert len(pinned) == 1 and moved[0]["instance"] not in pinned, (pinned, moved)
        assert moved[0]["instance"] == moved[1]["instance"]
        assert [m["path"] for m in moved] == ["/whoami?n=2"] * 2
    finally:
        api.delete(f"/v1/functions/{name}")
