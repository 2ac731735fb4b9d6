"""A real agentcell server in a subprocess for benchmarks: own state dir, free port, stopped by pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


BENCH_KEY = "ac_benchadmin0_" + "b" * 32
"""the admin key of a bench server started with AGENTCELL_AUTH=keys"""
AUTH = {"x-api-key": BENCH_KEY}


class BenchServer:
    """Without API keys unless `AGENTCELL_AUTH="keys"` is given (then `BENCH_KEY` is the admin
    key): the benchmarks measure the core; `observability_overhead` measures what auth adds."""

    def __init__(self, **env: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="agentcell-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        defaults = {  # the default log level (info: an access line per request), as users run it
            "AGENTCELL_AUTH": "off",
            "AGENTCELL_ADMIN_KEY": BENCH_KEY,
        }
        self._env = {**os.environ, **defaults, **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BenchServer:
        log = (self.tmp / "server.log").open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agentcell.server",
                "--port",
                str(self.port),
                "--state-dir",
                str(self.tmp / "state"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1):
                    pass
                self._wait_pool_filled(deadline)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError("bench server did not start: " + (self.tmp / "server.log").read_text()[-2000:])

    def _wait_pool_filled(self, deadline: float) -> None:
        """Until the sandbox pool holds what it means to: its refill spawns sandboxes in the
        background, which must not run while a benchmark measures (no wait when metrics are off)."""
        while time.monotonic() < deadline:
            pool = self._pool_metrics()
            if pool.get("ready", 0) >= pool.get("target", 0):
                return
            time.sleep(0.05)
        raise RuntimeError("the bench server's sandbox pool did not fill in 60 s")

    def _pool_metrics(self) -> dict[str, float]:
        request = urllib.request.Request(self.url + "/metrics", headers=AUTH)
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                text = reply.read().decode()
        except urllib.error.HTTPError:  # metrics off
            return {}
        return pool_gauges(text)

    def init_pid(self, instance_id: str) -> int:
        """The host pid of a running sandbox's (or function instance's) init, from its state file."""
        found = list((self.tmp / "state").rglob(f"{instance_id}.json"))
        assert len(found) == 1, f"no single state file for instance {instance_id}: {found}"
        pid: int = json.loads(found[0].read_text())["init_pid"]
        return pid

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def pool_gauges(metrics: str) -> dict[str, float]:
    """The sandbox pool's gauges in a /metrics text, by name: `ready`, `target`."""
    prefix = "agentcell_sandbox_pool_"
    return {
        line[len(prefix) :].split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith(prefix) and not line.startswith(prefix + "claims")
    }
