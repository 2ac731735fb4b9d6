"""What a running function instance costs the server in file descriptors once it has served a
request: its init's pidfd, its command channel to the init (which reports its server process's
exit there) and the gateway's pooled connection to it, no more (command_budget.FDS_PER_SANDBOX
counts a slot at 2, the mix of sandboxes and instances). Its server process runs on /dev/null:
it writes its own log (was: three pipes more)."""

from __future__ import annotations

import os
import time
import uuid

import httpx

from tests.conftest import AUTH, ServerFactory
from tests.integration.conftest import deploy

INSTANCES = 6
FDS_PER_USED_INSTANCE = 3
ANNOUNCING_ECHO = {"cmd": "echo starting $AGENTCELL_INSTANCE_ID; exec python3 app.py", "idle_timeout_s": 600}


def settled_fds(pid: int) -> int:
    """The server's open fds, the fewest of a few looks: one open for an instant is not counted."""
    counts = []
    for _ in range(5):
        counts.append(len(os.listdir(f"/proc/{pid}/fd")))
        time.sleep(0.02)
    return min(counts)


def serve(api: httpx.Client, fn: str, key: str) -> str:
    """The instance that answered a request of session `key`."""
    reply = api.get(f"/fn/{fn}/whoami", headers={"x-agentcell-session-id": key})
    assert reply.status_code == 200, reply.text
    instance: str = reply.json()["instance"]
    return instance


def test_an_instance_costs_the_server_at_most_its_slots_fds_and_still_logs(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(env={"AGENTCELL_SANDBOX_POOL": "0"})
    session_0 = {"x-agentcell-session-id": "session-0"}
    fn = "fds-" + uuid.uuid4().hex[:8]
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        assert deploy(api, fn, ANNOUNCING_ECHO).status_code == 200
        serve(api, fn, "warm-up")  # what the first instance starts once (the spawner) is not counted
        before = settled_fds(server.proc.pid)
        instances = {serve(api, fn, f"session-{i}") for i in range(INSTANCES)}
        held = settled_fds(server.proc.pid) - before
        assert len(instances) == INSTANCES
        # each: its init's pidfd, its command channel, the gateway's pooled connection to it
        assert held <= INSTANCES * FDS_PER_USED_INSTANCE, f"{held / INSTANCES:.2f} fds per instance"
        log = api.get(f"/fn/{fn}/file", params={"path": "/tmp/agentcell-server.log"}, headers=session_0)
        assert log.status_code == 200, log.text
        instance = serve(api, fn, "session-0")
        assert log.json()["text"] == f"starting {instance}\nlistening\n"  # the shell's and app.py's
        assert api.delete(f"/v1/functions/{fn}").status_code in (200, 204)
