"""Fixtures shared by every tier: a real agentcell server in a subprocess, on a free port."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_API_KEY = "ac_testsuite01_" + "k" * 32
"""the admin key of every server the tests start; the SDK and CLI of the tests send it"""
AUTH = {"x-api-key": TEST_API_KEY}
os.environ["AGENTCELL_API_KEY"] = TEST_API_KEY


class OrphanReaper:
    """Reaps, as a host's init would, what the servers the tests started leave to this process
    when they are killed. pytest is a subreaper once a system test has run
    (tests/system/conftest.py, as the server is), so a killed server's sandbox processes come
    back to it, and nobody here waits for them: a command's zombie keeps its sandbox's dying init
    in the kernel, and the next server on the state dir waits for the instance to go (its kill
    timeout, ~10 s) or never sees it end.

    Only processes seen descending from a watched server while it ran are reaped: each poll notes
    its descendants, by pid and start time (a pid taken over later is another process). Nothing
    that this process forked itself is among them, so no `subprocess.Popen` or asyncio child
    watcher loses its child's status; nor does an in-process LinuxDriver of a system test, which
    reaps its own orphans (its tests check that it does). The cgroup of a zombie would not do to
    tell whose it is (cgroup v1 shows it in the root), nor `waitid(P_ALL, WNOWAIT)`, which names
    one exited child at a time: one that is not ours to reap would hide every other behind it.
    Polled from a thread, without a SIGCHLD handler, which would change what every other waiter
    here sees. A process forked and orphaned within one poll is missed (as before: a wait)."""

    POLL_S = 0.05

    def __init__(self) -> None:
        self._servers: dict[int, int] = {}
        """pid -> start time of each watched server still running"""
        self._descendants: set[tuple[int, int]] = set()
        self._done = threading.Event()
        self._polling = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, pid: int) -> None:
        """Reap, from now on, what the server `pid` (a child of this process) leaves here."""
        self._servers[pid] = _start_time(pid)

    def start(self) -> None:
        self._done.clear()
        self._thread = threading.Thread(target=self._run, name="orphan-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """No poll while inside: each poll opens /proc files and pidfds, which a test counting
        this process's open fds would take for leaks."""
        with self._polling:
            yield

    def _run(self) -> None:
        while not self._done.wait(self.POLL_S):
            with self._polling:
                self._poll()

    def _poll(self) -> None:
        for pid, started in list(self._servers.items()):
            if _start_time(pid) != started:
                del self._servers[pid]  # exited and reaped: what it left is known
            else:
                self._descendants.update(_descendants(pid))
        for pid in _children(os.getpid()):
            self._reap_if_orphan(pid)

    def _reap_if_orphan(self, pid: int) -> None:
        """Reap pid if it is a zombie that a watched server left. The pidfd, opened first, pins
        the process: if it was reaped and its pid taken while /proc was read, the check fails."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return
        try:
            fields = _stat(pid)
            orphan = (pid, int(fields[19])) if fields[:1] == ["Z"] else None
            if orphan in self._descendants:
                signal.pidfd_send_signal(pidfd, 0)  # still the process /proc described
                os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
                self._descendants.discard(orphan)
        except OSError:
            pass  # gone meanwhile, or reaped by someone else
        finally:
            os.close(pidfd)


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3 first); [] once gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _start_time(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[19]) if fields else -1  # field 22: with the pid, it names one process


def _children(pid: int) -> set[int]:
    """The process's children, zombies included (every thread's `children` list)."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.scandir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found.update(int(child) for child in Path(task.path, "children").read_text().split())
    return found


def _descendants(pid: int) -> set[tuple[int, int]]:
    """(pid, start time) of every process below pid now."""
    found: set[tuple[int, int]] = set()
    below = list(_children(pid))
    while below:
        child = below.pop()
        found.add((child, _start_time(child)))
        below.extend(_children(child))
    return found


ORPHANS = OrphanReaper()


@pytest.fixture(scope="session", autouse=True)
def orphan_reaper() -> Iterator[OrphanReaper]:
    ORPHANS.start()
    yield ORPHANS
    ORPHANS.stop()


@pytest.fixture
def steady_fds() -> Iterator[None]:
    """For a test that counts this process's open fds: nothing else here opens any meanwhile."""
    with ORPHANS.paused():
        yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_built_helper: Path | None = None


def seed_helper(state_dir: Path) -> None:
    """Put the sandbox helper, compiled once per test session, in a new server's state dir: each
    server would otherwise compile it again (`gcc -static`, ~0.5 s of CPU), and the suite starts
    about 80 servers. A state dir that has it already (a restart) is left as it is."""
    global _built_helper
    from agentcell.server.sandbox.linux.build import helper_path

    if _built_helper is None:
        cache = Path(tempfile.mkdtemp(prefix="agentcell-test-helper-"))
        atexit.register(shutil.rmtree, cache, ignore_errors=True)
        _built_helper = helper_path(cache)
    target = state_dir / "bin" / _built_helper.name
    if not target.exists():
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copy2(_built_helper, target)


class ServerProcess:
    """`python -m agentcell.server` with its own state dir; stopped by pid, its log kept for failures."""

    def __init__(
        self,
        state_dir: Path,
        driver: str = "linux",
        env: dict[str, str] | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        """`launcher`: a command line the server's is appended to (prlimit, unshare…)."""
        self.state_dir = state_dir
        if driver == "linux":
            seed_helper(state_dir)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = state_dir.parent / f"server-{self.port}.log"
        args = ["--port", str(self.port), "--state-dir", str(state_dir), "--driver", driver]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*launcher, sys.executable, "-m", "agentcell.server", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "AGENTCELL_ADMIN_KEY": TEST_API_KEY, **(env or {})},
        )
        ORPHANS.watch(self.proc.pid)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not answer /healthz in {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class ServerFactory(Protocol):
    """`server_factory(env=...)`: a ServerProcess in the test's tmp dir, stopped after the test."""

    def __call__(
        self, state_dir: Path | None = None, driver: str = "linux", env: dict[str, str] | None = None
    ) -> ServerProcess: ...


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    started: list[ServerProcess] = []

    class Factory(ServerProcess):
        def __init__(
            self, state_dir: Path | None = None, driver: str = "linux", env: dict[str, str] | None = None
        ):
            super().__init__(state_dir or tmp_path / f"state-{len(started)}", driver, env)
            started.append(self)

    yield Factory
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("server") / "state")
    yield server
    code = server.stop()
    assert code == 0, f"server exited with {code}:\n{server.log()}"
    leftovers = list((server.state_dir / "instances").glob("*"))
    assert leftovers == [], f"instances left after shutdown: {leftovers}"


@pytest.fixture
def server_url(shared_server: ServerProcess) -> str:
    return shared_server.url
