"""gateway_overhead through the product's path: a deployed function's warm instance.

`gateway_overhead`'s other runs put the gateway's proxy engine (with a one-line router) in front
of an upstream on the host. This one measures what a user gets: a real server (its
`GatewayRouter`: the affinity, the connection's pin, the access log, usage metering) in front
of a function instance in its sandbox, every wrk connection sending the same session id (none
when the function is stateless). The baselines reach the same instance from inside its network
namespace (`nsenter --net`, as root): wrk straight to its port (`direct`), and wrk through
Debian's nginx started in that namespace as a plain reverse proxy (`nginx`). The instance runs
on Debian's python3 (the sandbox sees the host's /usr, not the server's venv):
- `_session`: the standard library's ThreadingHTTPServer, as a function without dependencies
  is written;
- `_session_bare`: a bare asyncio protocol answering a fixed reply (~15 us of CPU per request),
  the worst case for any proxy: the hop costs several times what the answer does;
- `_stateless_bare`: the same server in a function with affinity `none` (a published service,
  held to one instance here), so requests take the stateless warm path (`Scheduler.route_free`).
CPU per request is the instance cgroup's (cpuacct), the server process's and the nginx worker's.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.gateway_overhead import (
    BENCH,
    NGINX_CONF,
    WrkResult,
    free_port,
    nginx_binary,
    report_rps,
    run_wrk,
    stop_process,
)
from bench.procs import children, cpu_ms
from bench.report import emit, median, progress
from bench.server import BenchServer

FUNCTION = "gwbench"
SESSION = "bench-session-1"
HEADER = "x-agentcell-session-id"
INSTANCE_PORT = 8080
STDLIB_APP = b"""
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"hello, world\\n"

class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # the head and the body go in two writes

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Hello).serve_forever()
"""

BARE_APP = b"""
import asyncio, os
BODY = b"hello, world\\n"
HEAD = b"HTTP/1.1 200 OK\\r\\ncontent-type: text/plain\\r\\ncontent-length: %d\\r\\n\\r\\n"
ANSWER = HEAD % len(BODY) + BODY

class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.pending = transport, b""

    def data_received(self, data):
        self.pending += data
        while (end := self.pending.find(b"\\r\\n\\r\\n")) >= 0:  # GETs: no bodies
            self.pending = self.pending[end + 4 :]
            self.transport.write(ANSWER)

async def main():
    server = await asyncio.get_running_loop().create_server(Http, "127.0.0.1", int(os.environ["PORT"]))
    await server.serve_forever()

asyncio.run(main())
"""


@dataclass(frozen=True)
class Variant:
    suffix: str
    """of its metrics"""
    app: bytes
    """the instance's server"""
    stateless: bool = False
    """affinity `none` (a published service: one instance here) instead of a header session"""


VARIANTS = (
    Variant("_session", STDLIB_APP),
    Variant("_session_bare", BARE_APP),
    Variant("_stateless_bare", BARE_APP, stateless=True),
)


def run_session(tmp: Path, rounds: int, duration_s: float) -> None:
    with BenchServer() as server, httpx.Client(base_url=server.url, timeout=60) as client:
        for variant in VARIANTS:
            function = FUNCTION + variant.suffix.replace("_", "-")
            instance_id = _deploy_and_answer(client, function, variant, server.tmp / "state")
            netns = f"--net=/proc/{server.init_pid(instance_id)}/ns/net"
            with _nginx_in(netns, tmp) as (nginx_port, nginx_worker):
                inside = ["nsenter", netns]
                targets = {
                    "direct": (inside, f"http://127.0.0.1:{INSTANCE_PORT}/"),
                    "gateway": ([], f"{server.url}/fn/{function}/"),
                    "nginx": (inside, f"http://127.0.0.1:{nginx_port}/"),
                }
                cpu: dict[str, Callable[[], float]] = {
                    "direct": functools.partial(_cgroup_cpu_ms, instance_id),
                    "gateway": functools.partial(cpu_ms, server.pid),
                    "nginx": functools.partial(cpu_ms, nginx_worker),
                }
                headers = [] if variant.stateless else ["-H", f"{HEADER}: {SESSION}"]
                results, single = _measure(targets, cpu, rounds, duration_s, variant.suffix, headers)
            _report(results, single, variant.suffix)


def _deploy_and_answer(client: httpx.Client, function: str, variant: Variant, state_dir: Path) -> str:
    """Deploy the function, open the bench's session (or, stateless, let its one instance
    start), check that it answers: its instance's id."""
    code = io.BytesIO()
    with tarfile.open(fileobj=code, mode="w:gz") as tar:
        info = tarfile.TarInfo("app.py")
        info.size = len(variant.app)
        tar.addfile(info, io.BytesIO(variant.app))
    config: dict[str, object] = {"cmd": "python3 app.py", "port": INSTANCE_PORT, "idle_timeout_s": 3600}
    if variant.stateless:
        config |= {"affinity": {"kind": "none"}, "max_instances": 1}
    files: dict[str, tuple[str | None, bytes | str]] = {
        "config": (None, json.dumps(config)),
        "code": ("code.tar.gz", code.getvalue()),
    }
    instances_before = _instance_ids(state_dir)
    deployed = client.put(f"/v1/functions/{function}", files=files)
    assert deployed.status_code in (200, 201), deployed.text
    headers = {}
    if not variant.stateless:
        reply = client.post(f"/v1/functions/{function}/sessions", json={"key": SESSION})
        reply.raise_for_status()
        headers[HEADER] = SESSION
    answer = client.get(f"/fn/{function}/", headers=headers)
    assert answer.status_code == 200 and answer.content == b"hello, world\n", answer.text
    started = _instance_ids(state_dir) - instances_before
    assert len(started) == 1, f"{function} started {len(started)} instances, not one: {started}"
    return started.pop()


def _instance_ids(state_dir: Path) -> set[str]:
    return {path.stem for path in state_dir.rglob("instances/*.json")}


def _cgroup_cpu_ms(instance_id: str) -> float:
    found = list(Path("/sys/fs/cgroup/cpuacct").rglob(f"{instance_id}/cpuacct.usage"))
    assert len(found) == 1, f"no single cpuacct group for instance {instance_id}: {found}"
    return int(found[0].read_text()) / 1e6


@contextlib.contextmanager
def _nginx_in(netns: str, tmp: Path) -> Iterator[tuple[int, int]]:
    """Debian's nginx in the instance's network namespace, proxying to its port: (its port, its
    worker's pid)."""
    port = free_port()  # free on the host's loopback, and on the new namespace's all the more
    conf = tmp / "nginx-session.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, upstream_port=INSTANCE_PORT, extra=""))
    pid_file = tmp / "nginx.pid"
    pid_file.unlink(missing_ok=True)
    argv = ["nsenter", netns, nginx_binary(), "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "ngx.log")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and children(proc.pid)):  # the pid file follows the listen
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start in the instance's namespace: {proc.returncode}")
            time.sleep(0.05)
        yield port, children(proc.pid)[0]
    finally:
        stop_process(proc)


def _measure(
    targets: dict[str, tuple[list[str], str]],
    cpu: dict[str, Callable[[], float]],
    rounds: int,
    duration_s: float,
    suffix: str,
    headers: list[str],
) -> tuple[dict[str, list[WrkResult]], dict[str, list[WrkResult]]]:
    for name, (prefix, url) in targets.items():
        run_wrk(url, 1, prefix=prefix, extra=headers)
        progress(f"warmed up {name}{suffix}")
    results: dict[str, list[WrkResult]] = {name: [] for name in targets}
    for round_no in range(1, rounds + 1):
        for name, (prefix, url) in targets.items():
            before = cpu[name]()
            result = run_wrk(url, duration_s, prefix=prefix, extra=headers)
            result.cpu_ms_per_request = (cpu[name]() - before) / (result.rps * duration_s)
            results[name].append(result)
            progress(f"round {round_no} {name}{suffix}: {result.rps:.0f} req/s p50 {result.p50_ms:.3f} ms")
    single: dict[str, list[WrkResult]] = {name: [] for name in targets}
    for _ in range(2):
        for name, (prefix, url) in targets.items():
            single[name].append(run_wrk(url, min(duration_s, 3), 1, prefix=prefix, extra=headers))
            progress(f"one connection {name}{suffix}: p50 {single[name][-1].p50_ms:.3f} ms")
    return results, single


def _report(results: dict[str, list[WrkResult]], single: dict[str, list[WrkResult]], suffix: str) -> None:
    report_rps(results, suffix)
    cpu = {name: median([r.cpu_ms_per_request for r in rs]) for name, rs in results.items()}
    one = {name: median([r.p50_ms for r in rs]) for name, rs in single.items()}
    for name in ("direct", "gateway", "nginx"):
        base = None if name == "direct" else one["direct"]
        emit(BENCH, f"p50_c1_{name}{suffix}_ms", one[name], "ms", base)
    emit(BENCH, f"p50_added_c1{suffix}_ms", one["gateway"] - one["direct"], "ms")
    emit(BENCH, f"p50_added_c1_nginx{suffix}_ms", one["nginx"] - one["direct"], "ms")
    emit(BENCH, f"cpu_per_request_instance{suffix}_ms", cpu["direct"], "ms")
    emit(BENCH, f"cpu_per_request_nginx{suffix}_ms", cpu["nginx"], "ms", cpu["direct"])
    emit(BENCH, f"cpu_per_request_gateway{suffix}_ms", cpu["gateway"], "ms", cpu["nginx"])
