"""The server's file descriptors, on a real server with real sandboxes. At start the server raises
its soft open-file limit to the hard one (and, as root with CAP_SYS_RESOURCE, both to 1 MiB fds);
what runs in a sandbox never inherits that: every sandboxed process gets RLIMIT_NOFILE 1024 soft,
65536 hard (lower if the server's hard limit is lower and may not be raised). And the commands of
all sandboxes together stay under one budget (AGENTCELL_MAX_COMMANDS, else derived from the
open-file limit): a start past it is a 503 naming the limit, while every other request of every
tenant — another sandbox's files, lists, health — keeps working."""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH, ServerFactory
from tests.system.test_budget_commands import new_sandbox, wait_not_running

pytestmark = pytest.mark.system
CAP_SYS_RESOURCE = 24
SANDBOX_NOFILE = (1024, 65536)
SLEEPER = {"argv": ["sleep", "600"], "background": True}


def has_cap_sys_resource() -> bool:
    status = Path("/proc/self/status").read_text()
    effective = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    return bool(int(effective, 16) >> CAP_SYS_RESOURCE & 1)


def open_file_limits(pid: int | str) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no open-file limit for pid {pid}")


def expected_server_hard(inherited_hard: int) -> int:
    if not has_cap_sys_resource():
        return inherited_hard
    return max(inherited_hard, min(1 << 20, int(Path("/proc/sys/fs/nr_open").read_text())))


@contextlib.contextmanager
def lowered_soft_limit(soft: int) -> Iterator[int]:
    """Start servers with a soft limit below the hard one (as a systemd service gets, 1024:524288);
    the hard limit they inherit is yielded."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield before[1]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def run(api: httpx.Client, base: str, cmd: str) -> tuple[int, str]:
    reply = api.post(f"{base}/commands", json={"cmd": cmd})
    assert reply.status_code == 200, reply.text
    events = [httpx.Response(200, content=line).json() for line in reply.text.splitlines()]
    output = "".join(e.get("data", "") for e in events if e["type"] in ("stdout", "stderr"))
    return events[-1]["exit_code"], output


def test_the_server_raises_its_limit_and_sandboxes_get_their_own(server_factory: ServerFactory) -> None:
    """Started with soft 4096 under a higher hard limit, the server runs with soft = hard (the
    hard one raised to 1 MiB fds where it may), and says so in its log; a command runs with 1024 /
    65536 (the hard one capped by the server's, when the server may not raise it), and may raise its
    soft limit up to that hard one, not past it. The sandbox's init has the same hard limit and its
    soft one raised to it: it holds a control pipe per command it starts."""
    with lowered_soft_limit(4096) as inherited_hard:
        server = server_factory(env={"AGENTCELL_SANDBOX_POOL": "0"})
    hard = expected_server_hard(inherited_hard)
    assert open_file_limits(server.proc.pid) == (hard, hard)
    assert f"open-file limit {hard}:" in server.log()

    sandbox_hard = SANDBOX_NOFILE[1] if has_cap_sys_resource() else min(SANDBOX_NOFILE[1], hard)
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        base = new_sandbox(api)
        code, output = run(api, base, "ulimit -Sn; ulimit -Hn; grep 'open files' /proc/1/limits")
        assert code == 0, output
        soft_seen, hard_seen, init_line = output.splitlines()
        assert (int(soft_seen), int(hard_seen)) == (SANDBOX_NOFILE[0], sandbox_hard)
        assert init_line.split()[3:5] == [str(sandbox_hard), str(sandbox_hard)], init_line
        code, output = run(api, base, f"ulimit -Sn {sandbox_hard} && ulimit -Sn && ulimit -Hn {hard + 1}")
        assert code != 0 and output.startswith(f"{sandbox_hard}\n"), output


def test_the_server_wide_command_budget_refuses_past_it_and_nothing_else(
    server_factory: ServerFactory,
) -> None:
    """With AGENTCELL_MAX_COMMANDS=3, three background commands in one sandbox fill the server:
    a fourth start there or in another sandbox — foreground, background or a terminal — is a 503
    `unavailable` (Retry-After: 1) naming the limit, while the other sandbox's files, process list
    and the health check still answer. A killed command frees its slot for any sandbox."""
    server = server_factory(env={"AGENTCELL_SANDBOX_POOL": "0", "AGENTCELL_MAX_COMMANDS": "3"})
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        busy, other = new_sandbox(api), new_sandbox(api)
        started = [api.post(f"{busy}/commands", json=SLEEPER) for _ in range(3)]
        assert [r.status_code for r in started] == [201] * 3, started[-1].text

        for refused in (
            api.post(f"{busy}/commands", json=SLEEPER),
            api.post(f"{other}/commands", json={"cmd": "echo hi"}),
            api.post(f"{other}/commands", json={**SLEEPER, "pty": {"rows": 24, "cols": 80}}),
        ):
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            error = refused.json()
            assert error["code"] == "unavailable"
            assert "limit of 3 commands at once" in error["message"]
            assert "AGENTCELL_MAX_COMMANDS" in error["message"]

        written = api.put(f"{other}/files", params={"path": "/home/user/note.txt"}, content=b"still here")
        assert written.status_code in (200, 201, 204), written.text
        read = api.get(f"{other}/files", params={"path": "/home/user/note.txt"})
        assert read.status_code == 200 and read.content == b"still here"
        assert api.get(f"{other}/processes").status_code == 200
        assert httpx.get(f"{server.url}/healthz").status_code == 200

        victim = started[0].json()["process_id"]
        assert api.post(f"{busy}/processes/{victim}/signal", json={"signal": "SIGKILL"}).status_code == 204
        wait_not_running(api, busy, victim)
        assert run(api, other, "echo hi") == (0, "hi\n")
        assert api.post(f"{other}/commands", json=SLEEPER).status_code == 201
        assert api.post(f"{busy}/commands", json=SLEEPER).status_code == 503


def children(pid: int | str) -> list[str]:
    return [
        c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()
    ]


def exec_workers(server_pid: int) -> list[str]:
    """The workers the server's spawner (`acell-helper serve`) has not reaped: one per command."""
    spawner = [c for c in children(server_pid) if b"serve" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(spawner) == 1, spawner
    return children(spawner[0])


def test_refused_starts_leave_no_descriptor_or_worker_behind(server_factory: ServerFactory) -> None:
    """Starts refused for a bad cwd (by the sandbox's init, which starts commands) or past the
    server-wide budget (before the init is asked) give back every fd they opened, and leave no
    process behind: no exec worker at all (the init started the sleeper too)."""
    server = server_factory(env={"AGENTCELL_SANDBOX_POOL": "0", "AGENTCELL_MAX_COMMANDS": "1"})
    fds = Path(f"/proc/{server.proc.pid}/fd")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        base = new_sandbox(api)
        assert run(api, base, "true") == (0, "")
        before = len(list(fds.iterdir()))
        for _ in range(30):
            refused = api.post(f"{base}/commands", json={"argv": ["true"], "cwd": "/nope"})
            assert refused.status_code == 400, refused.text
        assert api.post(f"{base}/commands", json=SLEEPER).status_code == 201
        for _ in range(30):
            assert api.post(f"{base}/commands", json={"cmd": "true"}).status_code == 503
        assert len(list(fds.iterdir())) <= before + 5  # the sleeper's pipes, pidfd and control pipe
        assert exec_workers(server.proc.pid) == []
