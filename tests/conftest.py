"""Fixtures shared by every tier: a real agentcell server in a subprocess, on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
