"""cli_start: one run of the `agentcell` command, whole process, wall and CPU (user + system):
`agentcell --version`, `agentcell sandbox create`, `agentcell exec ID -- true`.

Baselines from the same run, in turn with the CLI so that drift hits both alike: a bare start of
the same interpreter (`python -c pass`), and `curl` making the same REST call (when curl exists):
the floor of any process that asks the server for the same thing.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.report import emit, median, progress
from bench.server import AUTH, BenchServer, pool_gauges

NAME = "cli_start"
RUNS = 15
WARMUP = 2
AGENTCELL = str(Path(sys.executable).parent / "agentcell")

Sample = tuple[float, float]
"""(wall ms, CPU ms) of one process"""


def run_process(argv: list[str], env: dict[str, str]) -> tuple[Sample, str]:
    """One process to its exit: its wall and CPU time (its own and that of the children it waited
    for, from the rusage of reaped children), and what it printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall_ms = (time.perf_counter() - started) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr}")
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return (wall_ms, cpu_s * 1000), done.stdout


def call(url: str, method: str, path: str, body: object = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url + path, data=data, method=method, headers={**AUTH, "content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        payload: bytes = reply.read()
        return payload


def wait_pool_full(url: str) -> None:
    """Until the server's sandbox pool has refilled: its spawns must not overlap a measurement."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        gauges = pool_gauges(call(url, "GET", "/metrics").decode())
        if gauges.get("ready", 0) >= gauges.get("target", 0):
            return
        time.sleep(0.02)
    raise RuntimeError("the sandbox pool did not refill in 60 s")


def curl(url: str, path: str, body: object) -> list[str]:
    """`curl` POSTing `body` as JSON, as the SDK does."""
    return ["curl", "-sSf", "-H", "content-type: application/json", "--data", json.dumps(body), url + path]


class Rounds:
    """Samples per process kind, taken in rounds (each kind once per round)."""

    def __init__(self, server: BenchServer, sandbox_id: str) -> None:
        self.url = server.url
        self.env = {**os.environ, "AGENTCELL_URL": server.url}
        self.sandbox_id = sandbox_id
        self.samples: dict[str, list[Sample]] = {}

    def kinds(self) -> dict[str, Callable[[], Sample]]:
        exec_path = f"/v1/sandboxes/{self.sandbox_id}/commands"
        kinds: dict[str, Callable[[], Sample]] = {
            "python": lambda: run_process([sys.executable, "-c", "pass"], self.env)[0],
            "version": lambda: run_process([AGENTCELL, "--version"], self.env)[0],
            "create": lambda: self._create([AGENTCELL, "sandbox", "create"], lambda out: out.strip()),
            "exec": lambda: run_process([AGENTCELL, "exec", self.sandbox_id, "--", "true"], self.env)[0],
        }
        if shutil.which("curl"):
            kinds["curl_create"] = lambda: self._create(
                curl(self.url, "/v1/sandboxes", {}), lambda out: str(json.loads(out)["id"])
            )
            kinds["curl_exec"] = lambda: run_process(curl(self.url, exec_path, {"cmd": "true"}), self.env)[0]
        return kinds

    def _create(self, argv: list[str], sandbox_id: Callable[[str], str]) -> Sample:
        wait_pool_full(self.url)
        sample, out = run_process(argv, self.env)
        call(self.url, "DELETE", f"/v1/sandboxes/{sandbox_id(out)}")
        return sample

    def run(self, runs: int, warmup: int) -> None:
        kinds = self.kinds()
        for round_ in range(runs + warmup):
            for kind, measure in kinds.items():
                sample = measure()
                if round_ >= warmup:
                    self.samples.setdefault(kind, []).append(sample)

    def p50(self, kind: str, index: int) -> float:
        return median([sample[index] for sample in self.samples[kind]])


def report(rounds: Rounds) -> None:
    for kind in ("version", "create", "exec"):
        for index, what in enumerate(("wall", "cpu")):
            value = rounds.p50(kind, index)
            emit(NAME, f"{kind}_{what}_p50_ms", value, "ms", rounds.p50("python", index))
            if f"curl_{kind}" in rounds.samples:
                emit(NAME, f"{kind}_{what}_p50_ms_vs_curl", value, "ms", rounds.p50(f"curl_{kind}", index))


def main() -> None:
    with BenchServer() as server:
        sandbox_id = json.loads(call(server.url, "POST", "/v1/sandboxes", {"timeout_s": 3600}))["id"]
        progress(f"{NAME}: {RUNS} rounds of agentcell --version / sandbox create / exec and baselines")
        rounds = Rounds(server, sandbox_id)
        rounds.run(RUNS, WARMUP)
        call(server.url, "DELETE", f"/v1/sandboxes/{sandbox_id}")
    report(rounds)


if __name__ == "__main__":
    main()
