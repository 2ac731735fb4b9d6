"""gateway_overhead: what the gateway's proxy costs, against a direct connection and nginx.

One uvicorn upstream (httptools + uvloop), and in front of it, each in its own process: our
`GatewayServer` (with a router doing the warm path's dict lookup) and Debian's nginx as a plain
reverse proxy with upstream keep-alive (one worker). Both write an access line per request, as
each does by default (the gateway's batched every 50 ms, nginx's given the same buffering). wrk
drives 50 keep-alive connections against each target in turn, for several interleaved rounds;
the medians are reported (under that load
p50 is mostly queueing, so the hop's own latency is also measured with one connection:
`p50_added_c1_ms`). Then one large streamed response (512 MiB) through each path, in MiB/s
(best of two). `cpu_per_request_*_ms`: CPU time the answering process (upstream, gateway, nginx
worker) spent per request during the wrk rounds, from /proc: far steadier than req/s when
something else runs on the machine.

The gateway runs its compiled build (`scripts/compile_gateway.py`, made by `make setup`); with
the `raw` upstream the same gateway also runs from its sources (AGENTCELL_PURE_PYTHON=1, target
`gateway_source`), interleaved with the others, so what compiling gains is measured in the run.

Two upstreams, one after the other:
- `raw`: a bare ASGI callable (~22 us of CPU per request here), the worst case for any proxy:
  the hop costs about as much CPU as the upstream itself. Metrics without a suffix.
- `typical`: the same answer from a Starlette app (route table, Request/Response objects), the
  weight of a small real Python function and of the upstream in the research runs that set the
  targets (~20k req/s direct there). Metrics with the suffix `_typical`.
- `function`: a FastAPI endpoint answering a pydantic model as JSON, the shape most deployed
  Python functions have (request parsing, validation, serialization). Suffix `_function`.

The last runs go through the product's whole path, a real server and a deployed function's
warm instance in its sandbox (`bench/gateway_session.py`; suffixes `_session`, `_session_bare`,
`_stateless_bare`).

The machine has two cores shared by wrk, the upstream and the proxy, so absolute figures move
with whatever else runs; compare within one run. With the `raw` upstream the three processes
need more than two cores: every extra hop (nginx included) takes CPU from both ends.

    python -m bench.gateway_overhead [--rounds 3] [--duration-s 5] [--stream-mib 512]

Installs `wrk` and `nginx-light` with apt-get when they are missing. Every process it starts is
stopped by pid before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentcell.server.gateway import BUILD
from agentcell.server.gateway.http1 import Forward, GatewayServer, RequestHead, Respond, Route, TcpUpstream
from agentcell.server.gateway.native import PURE_PYTHON_ENV
from bench.procs import children, cpu_ms
from bench.report import emit, median, progress

BENCH = "gateway_overhead"
REPO = Path(__file__).resolve().parent.parent
SMALL_BODY = b"hello, world\n"
CHUNK = b"x" * (1024 * 1024)
SESSION_HEADER = b"x-agentcell-session-id"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# --- the upstream: a trivial ASGI app under uvicorn -------------------------------------------


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """`/` answers a small body; `/stream?mib=N` streams N MiB in 1 MiB chunks."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/stream":
        mib = int(scope["query_string"].decode().partition("=")[2] or 512)
        length = str(mib * len(CHUNK)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        for _ in range(mib):
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(SMALL_BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": SMALL_BODY})


def typical_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The `typical` upstream (uvicorn --factory): Starlette is imported only where it runs."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route as StarletteRoute

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(SMALL_BODY)

    return Starlette(routes=[StarletteRoute("/", hello)])


def function_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The `function` upstream (uvicorn --factory): a FastAPI endpoint answering JSON."""
    from fastapi import FastAPI
    from pydantic import BaseModel

    class Answer(BaseModel):
        message: str
        session: str | None = None

    api = FastAPI()

    @api.get("/", response_model=Answer)  # (annotations are strings here: name the model)
    async def hello() -> Any:
        return Answer(message=SMALL_BODY.decode().strip())

    return api


UPSTREAMS = {
    "raw": ["bench.gateway_overhead:app"],
    "typical": ["bench.gateway_overhead:typical_app", "--factory"],
    "function": ["bench.gateway_overhead:function_app", "--factory"],
}


# --- the gateway process ----------------------------------------------------------------------


class _WarmRouter:
    """The integrator's warm path in miniature: a header lookup in an in-memory index."""

    def __init__(self, upstream_port: int) -> None:
        self._sessions = {b"bench": TcpUpstream("127.0.0.1", upstream_port)}
        self.completed = 0

    def route_nowait(self, head: RequestHead) -> Route | None:
        return self._route(head)

    async def route(self, head: RequestHead) -> Route:
        return self._route(head)

    def _route(self, head: RequestHead) -> Route:
        upstream = self._sessions.get(head.header(SESSION_HEADER) or b"bench")
        if upstream is None:
            return Respond(404, body=b"unknown session")
        return Forward(upstream, on_complete=self._on_complete, context={"session": "bench"})

    def _on_complete(self, status: int, bytes_in: int, bytes_out: int, duration_s: float) -> None:
        self.completed += 1


def serve_gateway(port: int, upstream_port: int) -> None:
    """Entry point of the gateway subprocess: serve until SIGTERM, with the garbage collector tuned
    and an access line per request (to its log file) as the server does at its default level."""
    import uvloop

    from agentcell.server.main import gateway_access_log, tune_garbage_collector
    from agentcell.server.observability.logs import setup_logging

    async def run() -> None:
        access = gateway_access_log(setup_logging("info").stream, "text")
        server = GatewayServer(_WarmRouter(upstream_port), access_log=access.add)
        await server.start("127.0.0.1", port)
        tune_garbage_collector()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.aclose(drain_timeout_s=1)
        access.close()

    uvloop.run(run())


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx-light")) if not _which(tool)]
    if not missing:
        return
    progress(f"installing {' '.join(missing)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=sys.stderr, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        check=True,
        stdout=sys.stderr,
        env=env,
    )


def nginx_binary() -> str:
    return _which("nginx") or "nginx"


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin")


@contextlib.contextmanager
def running(
    name: str, argv: list[str], ready_url: str, log_dir: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a process, wait until `ready_url` answers 200, stop it by pid on exit."""
    log = (log_dir / f"{name}.log").open("wb")
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(name, proc, ready_url, log_dir)
        yield proc
    finally:
        stop_process(proc)
        log.close()


def _wait_ready(name: str, proc: subprocess.Popen[bytes], url: str, log_dir: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {(log_dir / f'{name}.log').read_text()[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as reply:
            if reply.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not become ready at {url}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {tmp}/access.log combined buffer=64k flush=50ms;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_max_temp_file_size 0;
      {extra}
    }}
  }}
}}
"""


# --- measurements -----------------------------------------------------------------------------


@dataclass(slots=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float = 0.0  # of the process answering (upstream, gateway or nginx worker)


def run_wrk(
    url: str,
    duration_s: float,
    connections: int = 50,
    *,
    prefix: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> WrkResult:
    """`prefix`: what wrk runs under (nsenter); `extra`: more wrk arguments (headers)."""
    argv = [*prefix, "wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--latency", *extra, url]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        progress(f"  wrk reported: {errors.group(0)}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return WrkResult(rps, _latency_ms(out, "50%"), _latency_ms(out, "99%"))


def _latency_ms(out: str, pct: str) -> float:
    match = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    assert match, f"no {pct} latency in wrk output:\n{out}"
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
    return float(match.group(1)) * scale


def stream_mib_s(port: int, mib: int) -> float:
    """Read one `mib` MiB response as fast as a socket can; MiB/s over the whole response."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        buf = bytearray(1024 * 1024)
        view = memoryview(buf)
        start = time.perf_counter()
        sock.sendall(b"GET /stream?mib=%d HTTP/1.1\r\nHost: bench\r\n\r\n" % mib)
        got = sock.recv_into(view)
        head_end = bytes(buf[:got]).find(b"\r\n\r\n")
        assert head_end > 0 and b" 200 " in bytes(buf[:head_end]), bytes(buf[:got])[:200]
        remaining = mib * 1024 * 1024 - (got - head_end - 4)
        while remaining > 0:
            n = sock.recv_into(view)
            if n == 0:
                raise RuntimeError(f"stream ended {remaining} bytes early")
            remaining -= n
        return mib / (time.perf_counter() - start)


def measure(
    targets: dict[str, int],
    pids: dict[str, int],
    rounds: int,
    duration_s: float,
    stream_mib: int,
    suffix: str = "",
) -> None:
    """wrk rounds against each target (with the CPU its answering process, `pids[target]`, spent
    per request: steadier than req/s on a shared machine); with `stream_mib` > 0 also
    one-connection latency and the large streamed response."""
    for name, port in targets.items():  # warm up pools, caches and JITs of nobody
        run_wrk(f"http://127.0.0.1:{port}/", 1)
        progress(f"warmed up {name}")
    results: dict[str, list[WrkResult]] = {name: [] for name in targets}
    for round_no in range(1, rounds + 1):
        for name, port in targets.items():
            before = cpu_ms(pids[name])
            result = run_wrk(f"http://127.0.0.1:{port}/", duration_s)
            result.cpu_ms_per_request = (cpu_ms(pids[name]) - before) / (result.rps * duration_s)
            results[name].append(result)
            progress(f"round {round_no} {name}{suffix}: {result.rps:.0f} req/s p50 {result.p50_ms:.3f} ms")
    if not stream_mib:
        report_load(results, suffix)
        return
    single: dict[str, list[WrkResult]] = {name: [] for name in targets}
    for _ in range(2):  # one connection: the hop's own latency, without queueing behind others
        for name, port in targets.items():
            single[name].append(run_wrk(f"http://127.0.0.1:{port}/", min(duration_s, 3), connections=1))
            progress(f"one connection {name}: p50 {single[name][-1].p50_ms:.3f} ms")
    streams: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(2):
        for name, port in targets.items():
            streams[name].append(stream_mib_s(port, stream_mib))
            progress(f"stream {name}: {streams[name][-1]:.0f} MiB/s")
    report(results, single, streams)


def report_rps(results: dict[str, list[WrkResult]], suffix: str) -> None:
    """Median req/s of each target, the proxies' against direct, the gateway's against nginx."""
    rps = {name: median([r.rps for r in rs]) for name, rs in results.items()}
    emit(BENCH, f"rps_direct{suffix}", rps["direct"], "per_s")
    emit(BENCH, f"rps_gateway{suffix}", rps["gateway"], "per_s", rps["direct"])
    emit(BENCH, f"rps_nginx{suffix}", rps["nginx"], "per_s", rps["direct"])
    emit(BENCH, f"rps_gateway_vs_nginx{suffix}", rps["gateway"], "per_s", rps["nginx"])
    if "gateway_source" in rps:
        emit(BENCH, f"rps_gateway_source{suffix}", rps["gateway_source"], "per_s", rps["direct"])
        emit(BENCH, f"rps_gateway_vs_source{suffix}", rps["gateway"], "per_s", rps["gateway_source"])


def report_load(results: dict[str, list[WrkResult]], suffix: str = "") -> None:
    report_rps(results, suffix)
    p50 = {name: median([r.p50_ms for r in rs]) for name, rs in results.items()}
    p99 = {name: median([r.p99_ms for r in rs]) for name, rs in results.items()}
    for name in ("direct", "gateway", "nginx"):
        base = None if name == "direct" else p50["direct"]
        emit(BENCH, f"p50_{name}{suffix}_ms", p50[name], "ms", base)
        base = None if name == "direct" else p99["direct"]
        emit(BENCH, f"p99_{name}{suffix}_ms", p99[name], "ms", base)
    emit(BENCH, f"p50_added{suffix}_ms", p50["gateway"] - p50["direct"], "ms")
    emit(BENCH, f"p50_added_nginx{suffix}_ms", p50["nginx"] - p50["direct"], "ms")
    cpu = {name: median([r.cpu_ms_per_request for r in rs]) for name, rs in results.items()}
    emit(BENCH, f"cpu_per_request_upstream{suffix}_ms", cpu["direct"], "ms")
    emit(BENCH, f"cpu_per_request_nginx{suffix}_ms", cpu["nginx"], "ms", cpu["direct"])
    emit(BENCH, f"cpu_per_request_gateway{suffix}_ms", cpu["gateway"], "ms", cpu["nginx"])
    if "gateway_source" in cpu:
        source_cpu = cpu["gateway_source"]
        emit(BENCH, f"cpu_per_request_gateway_source{suffix}_ms", source_cpu, "ms", cpu["nginx"])
        emit(BENCH, f"cpu_per_request_gateway_vs_source{suffix}_ms", cpu["gateway"], "ms", source_cpu)


def report(
    results: dict[str, list[WrkResult]], single: dict[str, list[WrkResult]], streams: dict[str, list[float]]
) -> None:
    report_load(results)
    stream = {name: max(values) for name, values in streams.items()}
    one = {name: median([r.p50_ms for r in rs]) for name, rs in single.items()}
    emit(BENCH, "p50_c1_direct_ms", one["direct"], "ms")
    emit(BENCH, "p50_c1_gateway_ms", one["gateway"], "ms", one["direct"])
    emit(BENCH, "p50_c1_nginx_ms", one["nginx"], "ms", one["direct"])
    emit(BENCH, "p50_added_c1_ms", one["gateway"] - one["direct"], "ms")
    emit(BENCH, "p50_added_c1_nginx_ms", one["nginx"] - one["direct"], "ms")
    emit(BENCH, "stream_direct_mib_s", stream["direct"], "MB/s")
    emit(BENCH, "stream_nginx_mib_s", stream["nginx"], "MB/s", stream["direct"])
    emit(BENCH, "stream_mib_s", stream["gateway"], "MB/s", stream["nginx"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_overhead")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--stream-mib", type=int, default=512)
    args = parser.parse_args(argv or [])
    from bench.gateway_session import run_session  # it builds on this module's tools

    ensure_tools()
    with tempfile.TemporaryDirectory(prefix="bench-gw-") as tmp_name:
        tmp = Path(tmp_name)
        run_against("raw", tmp, args.rounds, args.duration_s, args.stream_mib)
        run_against("typical", tmp, args.rounds, args.duration_s, 0)
        run_against("function", tmp, args.rounds, args.duration_s, 0)
        run_session(tmp, args.rounds, args.duration_s)


def run_against(upstream_kind: str, tmp: Path, rounds: int, duration_s: float, stream_mib: int) -> None:
    """Start the upstream, the gateway and nginx, measure, stop them all."""
    python = sys.executable
    upstream_port, gateway_port, nginx_port = free_port(), free_port(), free_port()
    with contextlib.ExitStack() as stack:
        upstream = [python, "-m", "uvicorn", *UPSTREAMS[upstream_kind], "--host", "127.0.0.1"]
        upstream += ["--port", str(upstream_port), "--loop", "uvloop", "--http", "httptools"]
        upstream += ["--lifespan", "off", "--no-access-log", "--log-level", "warning"]
        upstream_proc = stack.enter_context(
            running("upstream", upstream, f"http://127.0.0.1:{upstream_port}/", tmp)
        )
        gateway = [python, "-m", "bench.gateway_overhead", "--serve-gateway", str(gateway_port)]
        gateway += ["--upstream-port", str(upstream_port)]
        gateway_proc = stack.enter_context(
            running("gateway", gateway, f"http://127.0.0.1:{gateway_port}/", tmp)
        )
        targets = {"direct": upstream_port, "gateway": gateway_port}
        pids = {"direct": upstream_proc.pid, "gateway": gateway_proc.pid}
        progress(f"the gateway runs its {BUILD} build")
        if upstream_kind == "raw":  # the same gateway run from its sources: what compiling it gains
            source_port = free_port()
            source = [python, "-m", "bench.gateway_overhead", "--serve-gateway", str(source_port)]
            source += ["--upstream-port", str(upstream_port)]
            pure = {**os.environ, PURE_PYTHON_ENV: "1"}
            source_proc = stack.enter_context(
                running("gateway-source", source, f"http://127.0.0.1:{source_port}/", tmp, pure)
            )
            targets["gateway_source"], pids["gateway_source"] = source_port, source_proc.pid
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=nginx_port, upstream_port=upstream_port, extra=""))
        nginx = [
            nginx_binary(),
            "-c",
            str(conf),
            "-p",
            str(tmp),
            "-e",
            str(tmp / "nginx-error.log"),
        ]
        nginx_proc = stack.enter_context(running("nginx", nginx, f"http://127.0.0.1:{nginx_port}/", tmp))
        targets["nginx"], pids["nginx"] = nginx_port, children(nginx_proc.pid)[0]
        suffix = "" if upstream_kind == "raw" else f"_{upstream_kind}"
        measure(targets, pids, rounds, duration_s, stream_mib, suffix)


def _cli() -> None:
    if "--serve-gateway" in sys.argv:
        parser = argparse.ArgumentParser()
        parser.add_argument("--serve-gateway", type=int, required=True)
        parser.add_argument("--upstream-port", type=int, required=True)
        args = parser.parse_args()
        serve_gateway(args.serve_gateway, args.upstream_port)
    else:
        main(sys.argv[1:])


if __name__ == "__main__":
    _cli()
