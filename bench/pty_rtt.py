"""pty_rtt: what a terminal costs against pipes, in one run.

* `echo_p50_ms`: `echo hi` through the REST API (a foreground command, start to end event) on a
  terminal (`pty`), against the same command on pipes.
* `line_p50_ms`: one line typed into `cat` and read back, driver level (the node's side of the
  terminal: master fd writes and reads under uvloop), against the same through `cat`'s pipes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

import uvloop

from agentcell.server.sandbox.driver import ExecSpec, SandboxProcess, SandboxSpec, TerminalSize
from agentcell.server.sandbox.linux.driver import LinuxDriver, become_subreaper
from bench.client import LeanClient
from bench.report import emit, median, progress
from bench.server import BenchServer

NAME = "pty_rtt"
RUNS = 200
WARMUP = 20
LINES = 2000
SIZE = {"rows": 24, "cols": 80}


async def echo_samples(port: int) -> tuple[list[float], list[float]]:
    """Interleaved: (on a terminal, on pipes), ms per `echo hi`."""
    async with LeanClient("127.0.0.1", port) as client:
        status, body = await client.request("POST", "/v1/sandboxes", {"timeout_s": 600})
        assert status == 201, body
        commands = f"/v1/sandboxes/{json.loads(body)['id']}/commands"
        pty: list[float] = []
        pipes: list[float] = []
        for i in range(RUNS + WARMUP):
            for samples, extra in ((pty, {"pty": SIZE}), (pipes, {})):
                started = time.perf_counter()
                _, events = await client.request("POST", commands, {"argv": ["echo", "hi"], **extra})
                if i >= WARMUP:
                    samples.append((time.perf_counter() - started) * 1000)
                assert b'"exit_code":0' in events, events
        return pty, pipes


async def typed_lines(process: SandboxProcess, expected: bytes) -> list[float]:
    samples = []
    for i in range(LINES + WARMUP):
        started = time.perf_counter()
        await process.write_stdin(b"x\n")
        seen = b""
        while len(seen) < len(expected):
            seen += await process.stdout.read(64)
        if i >= WARMUP:
            samples.append((time.perf_counter() - started) * 1000)
        assert seen == expected, seen
    return samples


async def line_samples() -> tuple[list[float], list[float]]:
    """(terminal, pipes) ms per line through `cat`; the terminal also echoes it (x\\r\\n twice)."""
    become_subreaper()
    state_dir = Path(tempfile.mkdtemp(prefix="agentcell-bench-pty-"))
    driver = LinuxDriver(state_dir, close_grace_s=0.5)
    try:
        await driver.start(SandboxSpec(sandbox_id="bench-pty"))
        terminal = await driver.exec("bench-pty", ExecSpec(argv=["cat"], terminal=TerminalSize(24, 80)))
        piped = await driver.exec("bench-pty", ExecSpec(argv=["cat"]))
        pty = await typed_lines(terminal, b"x\r\nx\r\n")
        pipes = await typed_lines(piped, b"x\n")
        for process in (terminal, piped):
            process.send_signal(9)
            await process.wait()
        return pty, pipes
    finally:
        await driver.aclose()
        shutil.rmtree(state_dir)


def main() -> None:
    with BenchServer() as server:
        progress(f"{NAME}: {RUNS} x echo hi on a terminal and on pipes, interleaved")
        pty, pipes = asyncio.run(echo_samples(server.port))
    emit(NAME, "echo_p50_ms", median(pty), "ms", median(pipes))
    progress(f"{NAME}: {LINES} lines through cat, terminal then pipes")
    typed, piped = uvloop.run(line_samples())
    emit(NAME, "line_p50_ms", median(typed), "ms", median(piped))


if __name__ == "__main__":
    main()
