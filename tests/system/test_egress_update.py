"""A running sandbox's egress policy replaced (`LinuxDriver.set_egress`, E2B's `update_network`),
end to end through the real driver and proxy: the new policy holds from the next connection, a
tunnel the old one allowed is cut, the proxy opens and closes with a policy that needs it, commands
started afterwards get its environment (the user's own variables kept), a restarted server's adopt
serves the policy given last, and a new policy that cannot open its proxy leaves the old one.
Servers are the test's own, on the host's loopback."""

from __future__ import annotations

import errno
import signal
import time
from pathlib import Path

import pytest

from agentcell.errors import Conflict, Internal
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


HOLD_THE_PROXY_PORT = """
import socket, time
s = socket.socket()
s.bind(("127.0.0.1", 3128))
s.listen()
open("/tmp/holding", "w").close()
time.sleep(600)
"""


async def test_a_process_holding_the_proxy_port_is_named_and_the_old_policy_stays(
    linux_driver: LinuxDriver, host_servers: tuple[int, int]
) -> None:
    """Between policies without a proxy the port is the sandbox's to take: the new policy is then
    refused with what to do (409), and the sandbox keeps the policy it had."""
    one, _ = host_servers
    sid = "egress-update-held"
    await linux_driver.start(SandboxSpec(sandbox_id=sid, egress=policy("none"), env={"MINE": "kept"}))
    holder = await linux_driver.exec(sid, ExecSpec(argv=["python3", "-c", HOLD_THE_PROXY_PORT]))
    deadline = time.monotonic() + 20
    while (await run(linux_driver, sid, ["test", "-e", "/tmp/holding"])).code != 0:
        assert time.monotonic() < deadline, "the holder did not bind 127.0.0.1:3128"

    with pytest.raises(Conflict, match=r"listens on 127\.0\.0\.1:3128, the port of its egress proxy"):
        await linux_driver.set_egress(sid, policy("allowlist", [f"127.0.0.1:{one}"]))
    assert not linux_driver.egress.is_attached(sid)
    env = (await run(linux_driver, sid, ["env"])).stdout
    assert "HTTP_PROXY" not in env and "MINE=kept" in env

    holder.send_signal(signal.SIGKILL)
    await holder.wait()
    await linux_driver.set_egress(sid, policy("allowlist", [f"127.0.0.1:{one}"]))
    assert (await curl(linux_driver, sid, f"http://127.0.0.1:{one}/"))[:2] == ("hello from one\n", "200")
    await linux_driver.stop(sid)


class FailingOnce:
    """The driver's NetnsSockets, whose next listen fails as a full file table would."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.failed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    async def listen(self, init_pidfd: int, port: int) -> object:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        return await self.real.listen(init_pidfd, port)  # type: ignore[attr-defined]


async def test_a_new_policy_that_cannot_open_its_proxy_leaves_the_old_one_serving(
    linux_driver: LinuxDriver, host_servers: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = host_servers
    sid = "egress-update-failed"
    await linux_driver.start(SandboxSpec(sandbox_id=sid, egress=policy("allowlist", [f"127.0.0.1:{one}"])))
    monkeypatch.setattr(linux_driver, "_netns", FailingOnce(linux_driver._netns))
    with pytest.raises(Internal, match="cannot open the egress proxy"):
        await linux_driver.set_egress(sid, policy("allowlist", [f"127.0.0.1:{two}"]))
    assert (await curl(linux_driver, sid, f"http://127.0.0.1:{one}/"))[:2] == ("hello from one\n", "200")
    assert (await curl(linux_driver, sid, f"http://127.0.0.1:{two}/"))[1] == "403"
    await linux_driver.stop(sid)
