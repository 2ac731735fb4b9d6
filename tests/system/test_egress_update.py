"""A running sandbox's egress policy replaced (`LinuxDriver.set_egress`, E2B's `update_network`),
end to end through the real driver and proxy: the new policy holds from the next connection, a
tunnel the old one allowed is cut, the proxy opens and closes with a policy that needs it, commands
started afterwards get its environment (the user's own variables kept), and a restarted server's
adopt serves the policy given last. Servers are the test's own, on the host's loopback."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentcell.protocol.egress import NetworkPolicy
from agentcell.server.egress.policy import EgressPolicy
from agentcell.server.sandbox.driver import ExecSpec, SandboxSpec
from agentcell.server.sandbox.linux.driver import LinuxDriver
from tests.system.conftest import run
from tests.system.test_egress import assert_adopted_with_its_policy, curl, host_servers

pytestmark = pytest.mark.system
__all__ = ["host_servers"]  # (the fixture, used by name)

TUNNEL = """
import socket, sys
s = socket.create_connection(("127.0.0.1", 3128))
s.sendall(b"CONNECT 127.0.0.1:%s HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" % sys.argv[1].encode())
answer = s.recv(4096)
with open("/tmp/tunnel.log", "w") as log:
    log.write(answer.split(b"\\r\\n")[0].decode() + "\\n")
    log.flush()
    s.settimeout(60)
    log.write("cut\\n" if s.recv(1) == b"" else "data\\n")
"""


def policy(egress: str, allow: list[str] | None = None) -> EgressPolicy:
    return EgressPolicy.from_wire(NetworkPolicy(egress=egress, allow=allow or []))


async def tunnel_log(driver: LinuxDriver, sid: str) -> str:
    return (await run(driver, sid, ["sh", "-c", "cat /tmp/tunnel.log 2>/dev/null || true"])).stdout


async def wait_for_log(driver: LinuxDriver, sid: str, text: str) -> None:
    deadline = time.monotonic() + 20
    while text not in (log := await tunnel_log(driver, sid)):
        assert time.monotonic() < deadline, f"{text!r} not in the tunnel's log: {log!r}"


async def test_a_new_policy_holds_at_once_and_cuts_what_the_old_one_let_through(
    linux_driver: LinuxDriver, host_servers: tuple[int, int]
) -> None:
    one, two = host_servers
    sid = "egress-update"
    spec = SandboxSpec(sandbox_id=sid, egress=policy("allowlist", [f"127.0.0.1:{one}"]), env={"MINE": "kept"})
    await linux_driver.start(spec)
    tunnel = await linux_driver.exec(sid, ExecSpec(argv=["python3", "-c", TUNNEL, str(one)]))
    await wait_for_log(linux_driver, sid, "HTTP/1.1 200")

    await linux_driver.set_egress(sid, policy("allowlist", [f"127.0.0.1:{two}"]))
    await wait_for_log(linux_driver, sid, "cut")  # the tunnel to `one` was closed under it
    assert (await curl(linux_driver, sid, f"http://127.0.0.1:{one}/"))[1] == "403"
    assert (await curl(linux_driver, sid, f"http://127.0.0.1:{two}/"))[:2] == ("hello from two\n", "200")

    await linux_driver.set_egress(sid, policy("none"))
    assert not linux_driver.egress.is_attached(sid)
    env = (await run(linux_driver, sid, ["env"])).stdout
    assert "HTTP_PROXY" not in env and "MINE=kept" in env
    assert (await curl(linux_driver, sid, f"http://127.0.0.1:{two}/"))[1] == "000"

    await linux_driver.set_egress(sid, policy("open"))
    assert linux_driver.egress.is_attached(sid)
    env = (await run(linux_driver, sid, ["sh", "-c", "echo $HTTPS_PROXY $MINE"])).stdout
    assert env == "http://127.0.0.1:3128 kept\n"
    body, code, _ = await curl(linux_driver, sid, f"http://127.0.0.1:{one}/")
    assert code == "403" and "(loopback;" in body  # the open proxy answers, and keeps to its rules
    assert (await tunnel.wait()).code == 0
    await linux_driver.stop(sid)


async def test_a_restarted_server_adopts_the_policy_given_last(
    linux_driver: LinuxDriver, prebuilt_helper: Path, host_servers: tuple[int, int]
) -> None:
    one, two = host_servers
    sid = "egress-update-adopt"
    await linux_driver.start(SandboxSpec(sandbox_id=sid, egress=policy("none")))
    await linux_driver.set_egress(sid, policy("allowlist", [f"127.0.0.1:{two}"]))
    await assert_adopted_with_its_policy(linux_driver, prebuilt_helper, sid, (two, "two"), one)
