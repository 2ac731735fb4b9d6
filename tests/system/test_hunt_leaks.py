"""Whatever way a sandbox, instance, session or the server itself ends, nothing of it stays on the
host: no process (by cgroup, or running the node's helper), cgroup, mount, network namespace or
interface, temporary file, nor a descriptor or thread of the server that grows cycle after cycle;
and a server started on the state dir of one that was SIGKILLed reaps or adopts what it left."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agentcell.server.sandbox.linux.driver import node_id_for
from tests.conftest import AUTH, REPO, ServerFactory, ServerProcess
from tests.integration.conftest import deploy

pytestmark = pytest.mark.system

KEY = "x-agentcell-session-id"
CGROUP_ROOT = Path("/sys/fs/cgroup")
ECHO_APP = REPO / "tests" / "fixtures" / "echo_fn" / "app.py"
DAEMONS = "setsid sleep 1001 & (sleep 1002 &); nohup sleep 1003 >/dev/null 2>&1 &"
"""what a command can leave running behind it: a new session, a double fork, a nohup"""
STUBBORN = "bash -c 'trap \"\" TERM; exec sleep 1004' &"
"""one that ignores SIGTERM (its sandbox's kill waits out the grace, ~2 s, for it)"""


@dataclass(frozen=True, slots=True)
class Host:
    """What of one server's node is on the host now."""

    processes: frozenset[int]
    cgroups: frozenset[str]
    mounts: frozenset[str]
    interfaces: frozenset[str]
    netns: frozenset[str]
    tmp: frozenset[str]


def host_of(state_dir: Path, tmp_dir: Path) -> Host:
    node = node_id_for(state_dir)
    return Host(
        processes=frozenset(_node_processes(state_dir, node)),
        cgroups=frozenset(str(p) for p in CGROUP_ROOT.glob(f"*/agentcell-{node}")),
        mounts=frozenset(
            line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(state_dir) in line
        ),
        interfaces=frozenset(os.listdir("/sys/class/net")),
        netns=frozenset(os.listdir("/run/netns") if os.path.isdir("/run/netns") else ()),
        tmp=frozenset(str(p) for p in tmp_dir.rglob("*")),
    )


def _node_processes(state_dir: Path, node: str) -> Iterator[int]:
    """Live processes in the node's cgroups, or running one of its programs (the spawner,
    helpers). Not zombies: those of a SIGKILLed server went to its reaper (this test process, a
    subreaper for the system tests), which holds nothing of the node for them."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cgroups = Path(entry.path, "cgroup").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().decode(errors="replace")
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if (f"agentcell-{node}" in cgroups or str(state_dir) in cmdline) and state != "Z":
            yield int(entry.name)


def instance_ids(state_dir: Path) -> list[str]:
    """The instances the node runs, by cgroup (one of the node's controllers is enough)."""
    node_dir = CGROUP_ROOT / "pids" / f"agentcell-{node_id_for(state_dir)}"
    return sorted(p.name for p in node_dir.iterdir() if p.is_dir()) if node_dir.is_dir() else []


def server_fds(server: ServerProcess) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def server_threads(server: ServerProcess) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/task"))


def zombie_children(server: ServerProcess) -> list[int]:
    """Exited children of the server that nobody reaped."""
    found = []
    for task in os.scandir(f"/proc/{server.proc.pid}/task"):
        for pid in Path(task.path, "children").read_text().split():
            status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if status == "Z":
                found.append(int(pid))
    return found


def settled(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    """Wait for `condition` a while (then the assertion after it says what is wrong)."""
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def state_dir(tmp_path: Path, prebuilt_helper: Path) -> Path:
    """A state dir holding the helper already built (no compiler run at the server's start)."""
    (tmp_path / "state" / "bin").mkdir(parents=True)
    shutil.copy2(prebuilt_helper, tmp_path / "state" / "bin" / prebuilt_helper.name)
    return tmp_path / "state"


class Api:
    def __init__(self, server: ServerProcess) -> None:
        self.http = httpx.Client(base_url=server.url, headers=AUTH, timeout=60)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.http.close()

    def sandbox(self, **create: object) -> str:
        reply = self.http.post("/v1/sandboxes", json={"timeout_s": 120, **create})
        assert reply.status_code == 201, reply.text
        sandbox_id: str = reply.json()["id"]
        return sandbox_id

    def run(self, sandbox_id: str, cmd: str, **request: object) -> None:
        reply = self.http.post(f"/v1/sandboxes/{sandbox_id}/commands", json={"cmd": cmd, **request})
        assert reply.status_code in (200, 201), reply.text
        if reply.status_code == 200:
            assert '"exit_code":0' in reply.text.replace(" ", ""), reply.text

    def busy_sandbox(self, *, stubborn: bool = True) -> str:
        """A sandbox with everything that can outlive a command: background processes, daemons,
        a terminal, a code kernel, and egress through the node's proxy."""
        sandbox_id = self.sandbox(network={"egress": "open"})
        self.run(sandbox_id, "sleep 1000", background=True)
        self.run(sandbox_id, DAEMONS + (STUBBORN if stubborn else ""))
        self.run(sandbox_id, "bash", pty={"rows": 24, "cols": 80}, background=True)
        assert self.http.post(f"/v1/sandboxes/{sandbox_id}/code", json={"code": "1 + 1"}).status_code == 200
        return sandbox_id

    def wait_gone(self, sandbox_id: str) -> None:
        deadline = time.monotonic() + 60
        while self.http.get(f"/v1/sandboxes/{sandbox_id}").status_code != 404:
            assert time.monotonic() < deadline, f"sandbox {sandbox_id} did not end"
            time.sleep(0.05)


def test_every_sandbox_ending_leaves_the_server_and_host_as_they_were(
    server_factory: ServerFactory, state_dir: Path, tmp_path: Path
) -> None:
    """Kill, timeout, pause then delete, resume then kill, each of a sandbox with daemons, a
    terminal, a kernel and egress: the server's descriptors, threads and children come back to
    a steady state, and the node holds no instance; after SIGTERM nothing of it is left."""
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    before = host_of(state_dir, tmp_dir)
    server = server_factory(state_dir, env={"AGENTCELL_SANDBOX_POOL": "0", "TMPDIR": str(tmp_dir)})
    with Api(server) as api:
        # First, for what the server makes once and keeps (the kernel client's threads, those
        # of the executors that snapshots and restores run on...).
        assert api.http.delete(f"/v1/sandboxes/{api.busy_sandbox(stubborn=False)}").status_code == 204
        _pause_resume_kill(api)
        steady = (server_fds(server), server_threads(server))
        _end_every_way(api)
    assert instance_ids(server.state_dir) == []
    fds, threads = steady
    settled(lambda: server_fds(server) <= fds and server_threads(server) <= threads)  # (some come and go)
    assert server_fds(server) <= fds, "the server's descriptors grew with the sandboxes it ran"
    assert server_threads(server) <= threads, "the server's threads grew with the sandboxes it ran"
    assert zombie_children(server) == []
    assert server.stop() == 0
    assert host_of(server.state_dir, tmp_dir) == before
    assert list((server.state_dir / "instances").iterdir()) == []


def _end_every_way(api: Api) -> None:
    timed_out = api.sandbox(timeout_s=1)
    api.run(timed_out, DAEMONS)
    assert api.http.delete(f"/v1/sandboxes/{api.busy_sandbox()}").status_code == 204
    paused = api.sandbox()
    api.run(paused, DAEMONS)
    assert api.http.post(f"/v1/sandboxes/{paused}/pause").status_code == 200
    assert api.http.delete(f"/v1/sandboxes/{paused}").status_code == 204
    _pause_resume_kill(api)
    api.wait_gone(timed_out)


def _pause_resume_kill(api: Api) -> None:
    resumed = api.sandbox()
    assert api.http.post(f"/v1/sandboxes/{resumed}/pause").status_code == 200
    assert api.http.post(f"/v1/sandboxes/{resumed}/resume").status_code == 200
    api.run(resumed, DAEMONS)
    assert api.http.delete(f"/v1/sandboxes/{resumed}").status_code == 204


def test_a_server_killed_with_everything_live_is_reaped_by_the_next(
    server_factory: ServerFactory, state_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL with a busy sandbox, a paused one, the sandbox pool, a function's session and warm
    instance live, and a deploy unpacking its archive: the next server on the state dir reaps the
    running sandboxes, keeps the paused one, adopts the function's instances (or reaps one not
    recorded yet: never both), refills the pool to its size and no more, and removes the
    archive (the server keeps it in <state_dir>/uploads while it unpacks it: it used to stay
    there, tens of MiB a crash); its SIGTERM then leaves nothing behind."""
    tmp_dir = tmp_path / "tmp"
    tmp_dir.mkdir()
    before = host_of(state_dir, tmp_dir)
    env = {"AGENTCELL_SANDBOX_POOL": "2", "TMPDIR": str(tmp_dir)}
    server = server_factory(state_dir, env=env)
    with Api(server) as api:
        busy = api.busy_sandbox(stubborn=False)
        paused = api.sandbox()
        assert api.http.post(f"/v1/sandboxes/{paused}/pause").status_code == 200
        assert deploy(api.http, "leaky", {"cmd": "python3 app.py", "min_warm": 1}).status_code == 200
        assert api.http.get("/fn/leaky/whoami", headers={KEY: "alice"}).status_code == 200
        _function_instances(server.state_dir)
    deploying = _deploy_until_unpacking(server)
    server.stop(signal.SIGKILL)  # what it leaves to this process is reaped (tests/conftest.py)
    deploying.join()
    assert list((state_dir / "uploads").iterdir()) != []  # the archive being unpacked
    again = server_factory(state_dir=server.state_dir, env=env)
    assert list((state_dir / "uploads").iterdir()) == []  # it stayed there for good
    _check_restart(again, busy, paused)
    assert host_of(again.state_dir, tmp_dir) == before


def _check_restart(again: ServerProcess, busy: str, paused: str) -> None:
    with Api(again) as api:
        assert api.http.get(f"/v1/sandboxes/{busy}").status_code == 404
        assert api.http.get(f"/v1/sandboxes/{paused}").json()["state"] == "paused"
        live = _wait_for_instances(again.state_dir)
        # Adopted, or reaped and started anew (one the killed server had not recorded yet): never both.
        assert len(live["ins"]) == api.http.get("/v1/functions/leaky").json()["instances"] <= 2, live
        assert len(live["sbx"]) == 2, live  # the pool's, made anew; the busy one reaped
    assert again.stop() == 0


def _function_instances(state_dir: Path) -> None:
    """Wait for the function's session instance and warm one to run."""
    deadline = time.monotonic() + 60
    while len(found := _by_kind(state_dir)["ins"]) < 2:
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def _wait_for_instances(state_dir: Path) -> dict[str, list[str]]:
    """The node's instances by kind once the pool is full and the function's warm one runs,
    after a moment to see that no more come."""
    deadline = time.monotonic() + 60
    while len(_by_kind(state_dir)["sbx"]) < 2 or not _by_kind(state_dir)["ins"]:
        assert time.monotonic() < deadline, _by_kind(state_dir)
        time.sleep(0.05)
    time.sleep(0.5)
    return _by_kind(state_dir)


def _by_kind(state_dir: Path) -> dict[str, list[str]]:
    ids = instance_ids(state_dir)
    return {kind: [i for i in ids if i.startswith(kind + "_")] for kind in ("ins", "sbx")}


def many_files_archive(files: int) -> bytes:
    """The echo function plus `files` empty files: an archive that takes a while to unpack."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(ECHO_APP, "app.py")
        for n in range(files):
            tar.addfile(tarfile.TarInfo(f"d{n // 500}/f{n}"), io.BytesIO(b""))
    return buffer.getvalue()


ATTEMPTS = 3
"""a deploy that finished before it was seen unpacking is tried again"""


def _deploy_until_unpacking(server: ServerProcess) -> threading.Thread:
    """A deploy of many files, caught while the server unpacks it (its archive saved)."""
    archive = many_files_archive(1000)
    staged = server.state_dir / "functions" / "big"
    for _ in range(ATTEMPTS):
        deploying = threading.Thread(target=_deploy_quietly, args=(server.url, archive))
        deploying.start()
        while deploying.is_alive() and not list(staged.glob(".staging-*")):
            time.sleep(0.002)
        if deploying.is_alive():
            return deploying
        deploying.join()
    pytest.fail(f"the deploy finished before it could be caught unpacking, {ATTEMPTS} times")


def _deploy_quietly(url: str, archive: bytes) -> None:
    """A deploy whose server dies under it."""
    files: dict[str, tuple[str | None, str | bytes]] = {
        "config": (None, json.dumps({"cmd": "python3 app.py"})),
        "code": ("code.tar", archive),
    }
    with httpx.Client(headers=AUTH, timeout=60) as client, contextlib.suppress(httpx.HTTPError):
        client.put(f"{url}/v1/functions/big", files=files)
