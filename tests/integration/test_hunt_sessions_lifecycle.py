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
