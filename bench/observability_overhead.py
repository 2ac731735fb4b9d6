"""observability_overhead: what API keys, metrics and metering cost the warm gateway path, as
shipped (AGENTCELL_AUTH=keys: every request carries a key the gateway checks), against a server
with keys and metrics off (AGENTCELL_AUTH=off, AGENTCELL_METRICS=false), in the same run. Two more export
traces over OTLP/HTTP to a sink on loopback (of every request; of one in ten): the cost of tracing
when it is turned on.

Each server runs a minimal keep-alive HTTP function (`FAST_APP`); 16 sessions (one keep-alive
connection each) send `GET /fn/obs/whoami` as fast as they are answered. The servers take turns,
several interleaved rounds of a few seconds each (the machine is shared and noisy: compare within
one run); the median round's requests per second are reported.

The audit log sits on the control plane, not on this path. It is measured on
`POST /v1/sandboxes/{id}/timeout` (a mutating call: one audit row each) against `GET` of the same
sandbox (not audited), sequentially on one connection: an upper bound on what the audit write
adds to a control-plane call (the POST also parses a JSON body); and one audit append on the
SQLite store alone, against one `GET` round trip.

    python -m bench observability_overhead
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from agentcell.server.meta.records import AuditRecord
from agentcell.server.meta.sqlite import SqliteMetaStore
from agentcell.server.observability.registry import Registry
from agentcell.server.observability.telemetry import NullTelemetry, Telemetry
from bench.client import LeanClient
from bench.report import emit, median, progress
from bench.server import AUTH, BenchServer

BENCH = "observability_overhead"
SESSIONS = 16
DRAIN_S = 2.0
FUNCTION = "obs"


@contextmanager
def trace_sink() -> Iterator[str]:
    """An OTLP/HTTP endpoint that accepts and drops every export."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def _session(client: LeanClient, key: str, until: float) -> int:
    done = 0
    headers = {"x-agentcell-session-id": key, **AUTH}  # (the server without keys ignores it)
    while time.perf_counter() < until:
        status, body = await client.request("GET", f"/fn/{FUNCTION}/whoami", headers=headers)
        assert status == 200, body
        done += 1
    return done


async def warm_rate(port: int, duration_s: float) -> float:
    """Requests per second over `duration_s` from SESSIONS bound sessions (bound before timing)."""
    clients = [LeanClient("127.0.0.1", port) for _ in range(SESSIONS)]
    for client in clients:
        await client.__aenter__()
    try:
        keys = [f"bench-{i}" for i in range(SESSIONS)]
        for client, key in zip(clients, keys, strict=True):  # one request each: bound and warm
            await client.request(
                "GET", f"/fn/{FUNCTION}/whoami", headers={"x-agentcell-session-id": key, **AUTH}
            )
        started = time.perf_counter()
        until = started + duration_s
        done = await asyncio.gather(*(_session(c, k, until) for c, k in zip(clients, keys, strict=True)))
        return sum(done) / (time.perf_counter() - started)
    finally:
        for client in clients:
            await client.__aexit__()


async def control_rate(port: int, method: str, path: str, count: int) -> float:
    """Sequential control-plane requests per second on one connection."""
    async with LeanClient("127.0.0.1", port) as client:
        started = time.perf_counter()
        for _ in range(count):
            status, body = await client.request(
                method, path, {"timeout_s": 600} if method == "POST" else None
            )
            assert status == 200, body
        return count / (time.perf_counter() - started)


FAST_APP = b"""
import asyncio, os
REPLY = b"HTTP/1.1 200 OK\\r\\ncontent-type: text/plain\\r\\ncontent-length: 3\\r\\n\\r\\nok\\n"
class Ok(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        self.buffer += data
        while b"\\r\\n\\r\\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\\r\\n\\r\\n")
            self.transport.write(REPLY)
async def main():
    server = await asyncio.get_running_loop().create_server(Ok, "127.0.0.1", int(os.environ["PORT"]))
    await server.serve_forever()
asyncio.run(main())
"""
"""The function under test: a bodiless-GET-only HTTP/1.1 server on raw asyncio with keep-alive, so
that the gateway, not the upstream, is what limits the rate (the test echo function's
thread-per-connection `http.server` would hide the gateway's costs)."""


def fast_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("app.py")
        info.size = len(FAST_APP)
        tar.addfile(info, io.BytesIO(FAST_APP))
    return buffer.getvalue()


def prepare(server: BenchServer) -> str:
    """Deploy the fast function (an instance for every session) and create one sandbox."""
    with httpx.Client(base_url=server.url, timeout=120, headers=AUTH) as api:
        config = {"cmd": "python3 app.py", "idle_timeout_s": 3600, "max_instances": SESSIONS + 2}
        files: dict[str, tuple[str | None, bytes | str]] = {
            "config": (None, json.dumps(config)),
            "code": ("code.tar.gz", fast_archive()),
        }
        api.put(f"/v1/functions/{FUNCTION}", files=files).raise_for_status()
        created = api.post("/v1/sandboxes", json={"timeout_s": 600})
        created.raise_for_status()
        sandbox: str = created.json()["id"]
        return sandbox


def measure_rounds(ports: dict[str, int], rounds: int, duration_s: float) -> dict[str, list[float]]:
    """A discarded warm-up pass, then `rounds` passes. The pair under test (shipped, off) runs
    first in each round, in alternating order; the traced servers run after it, then a pause lets
    their span exporters drain (their export threads and the sink would otherwise steal CPU from
    whatever runs next)."""
    names = list(ports)
    for name in names:
        asyncio.run(warm_rate(ports[name], 1.0))
    time.sleep(DRAIN_S)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(rounds):
        pair = ["shipped", "off"] if round_no % 2 == 0 else ["off", "shipped"]
        for name in pair + [n for n in names if n not in pair]:
            rates[name].append(asyncio.run(warm_rate(ports[name], duration_s)))
        time.sleep(DRAIN_S)
        progress(
            f"{BENCH}: round {round_no + 1}/{rounds}: "
            + ", ".join(f"{n} {rates[n][-1]:.0f}/s" for n in names)
        )
    return rates


def hook_ns(telemetry: Telemetry, calls: int = 200_000) -> float:
    """CPU per request of the gateway's metric hook (what the warm path adds), in ns. Reported as
    a share of one warm request's time: the noise-free counterpart of the throughput figures,
    which move ±10% between rounds here."""
    telemetry.request_done(FUNCTION, 200, 0.001)
    started = time.perf_counter()
    for _ in range(calls):
        telemetry.request_done(FUNCTION, 200, 0.001)
    return (time.perf_counter() - started) / calls * 1e9


async def audit_append_us(rows: int = 500) -> float:
    """Wall time of one audit write of one entry on the SQLite store (thread hop + WAL commit), in
    µs: what a request costs when no other entry shares its write."""
    with tempfile.TemporaryDirectory(prefix="agentcell-bench-") as tmp:
        store = SqliteMetaStore(Path(tmp) / "meta.db")
        await store.open()
        try:
            record = AuditRecord(
                0.0, "local", "default", "POST /v1/x/{id}", "id=1", 200, "req_1", "POST", "/v1/x/1"
            )
            for _ in range(20):
                await store.append_audits([record])
            started = time.perf_counter()
            for _ in range(rows):
                await store.append_audits([record])
            return (time.perf_counter() - started) / rows * 1e6
        finally:
            await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.observability_overhead")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration-s", type=float, default=2.0)
    args = parser.parse_args([])
    with ExitStack() as stack:
        sink = stack.enter_context(trace_sink())
        servers = {
            "shipped": stack.enter_context(BenchServer(AGENTCELL_AUTH="keys")),
            "off": stack.enter_context(BenchServer(AGENTCELL_METRICS="false")),
            "traced": stack.enter_context(BenchServer(AGENTCELL_OTLP_ENDPOINT=sink)),
            "traced_10pct": stack.enter_context(
                BenchServer(AGENTCELL_OTLP_ENDPOINT=sink, AGENTCELL_TRACE_SAMPLE_RATIO="0.1")
            ),
        }
        sandboxes = {name: prepare(server) for name, server in servers.items()}
        rates = measure_rounds({name: s.port for name, s in servers.items()}, args.rounds, args.duration_s)
        off = servers["off"]
        sandbox = sandboxes["off"]
        writes = median(
            [asyncio.run(control_rate(off.port, "POST", f"/v1/sandboxes/{sandbox}/timeout", 200))]
        )
        reads = median([asyncio.run(control_rate(off.port, "GET", f"/v1/sandboxes/{sandbox}", 200))])
    emit(BENCH, "warm_requests_per_s", median(rates["shipped"]), "per_s", median(rates["off"]))
    emit(BENCH, "warm_requests_per_s_traced", median(rates["traced"]), "per_s", median(rates["off"]))
    emit(
        BENCH,
        "warm_requests_per_s_traced_10pct",
        median(rates["traced_10pct"]),
        "per_s",
        median(rates["off"]),
    )
    emit(BENCH, "audited_control_requests_per_s", writes, "per_s", reads)
    emit(BENCH, "audit_append_ms", asyncio.run(audit_append_us()) / 1000, "ms", 1000 / reads)
    hooks = [(hook_ns(Telemetry(Registry())), hook_ns(NullTelemetry())) for _ in range(5)]
    request_ns = 1e9 / median(rates["off"])  # the server's time per warm request, metrics off
    hook, null = median([h for h, _ in hooks]), median([n for _, n in hooks])
    emit(
        BENCH,
        "metric_hook_share_of_warm_request",
        100 * hook / request_ns,
        "percent",
        100 * null / request_ns,
    )


if __name__ == "__main__":
    main()
