"""Function lifecycle against live sessions on the real server: a deploy of a function whose
delete is still ending its sessions (pre-stop hooks, last snapshots) must neither fail with a 500
nor touch the code of the instances being stopped; once the delete is done the name deploys anew."""

from __future__ import annotations

import threading
import time
import uuid

import httpx

from tests.conftest import AUTH
from tests.integration.conftest import deploy

KEY = "x-agentcell-session-id"


def _delete(url: str, fn: str, out: dict[str, int]) -> None:
    with httpx.Client(headers=AUTH, base_url=url, timeout=60) as api:
        out["status"] = api.delete(f"/v1/functions/{fn}").status_code


def test_a_deploy_during_a_delete_is_refused_then_works(api: httpx.Client, server_url: str) -> None:
    """It used to unpack the new code over the dying instances' /code (same version number) and
    answer 500 (a duplicate version row); had it got through, the delete's end would have erased
    the new function's records and code."""
    fn = "redeploy-" + uuid.uuid4().hex[:6]
    slow_end = {"cmd": "python3 app.py", "pre_stop": {"cmd": "sleep 2", "timeout_s": 10}}
    assert deploy(api, fn, slow_end).status_code == 200
    assert api.get(f"/fn/{fn}/file", params={"path": "/code/app.py"}, headers={KEY: "a"}).status_code == 200
    deleted: dict[str, int] = {}
    deleting = threading.Thread(target=_delete, args=(server_url, fn, deleted))
    deleting.start()
    time.sleep(0.5)
    during = deploy(api, fn, {"cmd": "python3 app.py"})
    assert during.status_code == 409, during.text
    assert "being deleted" in during.json()["message"]
    deleting.join()
    assert deleted == {"status": 204}
    after = deploy(api, fn, {"cmd": "python3 app.py"})
    assert after.status_code == 200 and after.json()["version"] == 1, after.text
    whoami = api.get(f"/fn/{fn}/whoami", headers={KEY: "b"})
    assert whoami.status_code == 200 and whoami.json()["version"] == "1"
    assert api.delete(f"/v1/functions/{fn}").status_code == 204


def _slow_request(url: str, fn: str, out: dict[str, httpx.Response]) -> None:
    with httpx.Client(headers=AUTH, base_url=url, timeout=60) as api:
        out["reply"] = api.get(f"/fn/{fn}/slow", params={"s": 5}, headers={KEY: "inflight"})


def _wait_until_active(api: httpx.Client, session: str, timeout_s: float = 30) -> None:
    """Wait until the session has a request in flight (it is `active` while the gateway holds
    one). Asked of the API, not of the instance: a request of the session's own would take the
    instance connection that the slow one is to reuse, and change how its cut is reported."""
    deadline = time.monotonic() + timeout_s
    while (state := api.get(f"/v1/sessions/{session}").json()["state"]) != "active":
        assert time.monotonic() < deadline, f"the slow request never reached its session ({state})"
        time.sleep(0.02)


def test_a_request_cut_by_its_session_s_end_says_so(api: httpx.Client, server_url: str) -> None:
    """A request in flight when its session is deleted gets a 502 that says the session ended and
    the instance was stopped (it said the instance had failed, and marked it failed)."""
    fn = "cut-" + uuid.uuid4().hex[:6]
    assert deploy(api, fn, {"cmd": "python3 app.py"}).status_code == 200
    assert api.get(f"/fn/{fn}/slow", params={"s": 0}, headers={KEY: "inflight"}).status_code == 200
    session = api.get(f"/v1/functions/{fn}/sessions").json()["sessions"][0]["id"]
    out: dict[str, httpx.Response] = {}
    waiting = threading.Thread(target=_slow_request, args=(server_url, fn, out))
    waiting.start()
    _wait_until_active(api, session)
    assert api.delete(f"/v1/sessions/{session}").status_code == 204
    waiting.join()
    reply = out["reply"]
    assert reply.status_code == 502, reply.text
    message = reply.json()["message"]
    assert f"its session {session} ended" in message and "stopped while this request" in message, message
    assert "failed" not in message, message
    api.delete(f"/v1/functions/{fn}")
