"""file_watch: directory watches (`GET /v1/sandboxes/{id}/files/watch`, inotify on the node).

A sandbox holds a tree of 200 folders of 10 files. Three figures, each with a same-run baseline:
- `event_latency_p50_ms`: a file written through the files API until its `create` line reaches the
  watching client; baseline: the same write until a raw inotify watch that the bench itself holds
  on the same folder (through `/proc/<init>/root`) becomes readable.
- `open_recursive_ms_200_dirs`: opening a recursive watch of the tree (until its `start` line);
  baseline: a recursive listing of the same tree (`files/list?depth=16`), which the watch's own
  set-up does a part of.
- `idle_cpu_ms_per_s_32_watches`: the server's CPU per second while 32 recursive watches of the
  tree are open and nothing changes; baseline: the same time with no watch open. (The polling
  watcher this replaced listed the tree five times a second for each: ~44 ms of CPU a look here,
  so 32 of them would have wanted ~7 s of CPU per second.)

    python -m bench file_watch
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import time
from collections.abc import AsyncIterator

import httpx

from agentcell.server.sandbox.file_watch import IN_CREATE, IN_MOVED_TO, IN_NONBLOCK
from bench.procs import cpu_ms
from bench.report import emit, median, progress
from bench.server import BenchServer

NAME = "file_watch"
FOLDERS, FILES = 200, 10
ROUNDS = 40
WATCHES = 32
IDLE_S = 5.0
_libc = ctypes.CDLL(None, use_errno=True)


async def write(client: httpx.AsyncClient, sandbox: str, path: str) -> None:
    reply = await client.put(f"/v1/sandboxes/{sandbox}/files", params={"path": path}, content=b"x")
    assert reply.status_code in (200, 201), reply.text


@contextlib.asynccontextmanager
async def watching(
    client: httpx.AsyncClient, sandbox: str, path: str, recursive: bool
) -> AsyncIterator[AsyncIterator[dict[str, object]]]:
    """A watch stream, once its `start` line came: its later lines as dicts."""
    params = {"path": path, "recursive": str(recursive).lower()}
    async with client.stream("GET", f"/v1/sandboxes/{sandbox}/files/watch", params=params) as reply:
        assert reply.status_code == 200, (await reply.aread()).decode()
        lines = (json.loads(line) async for line in reply.aiter_lines() if line)
        first = await anext(lines)
        assert first["type"] == "start", first
        yield lines


async def next_create(lines: AsyncIterator[dict[str, object]], name: str) -> None:
    async for line in lines:
        if line.get("type") == "event" and line.get("kind") == "create" and line.get("name") == name:
            return
    raise AssertionError(f"the watch ended before {name} was made")


async def raw_inotify_ms(client: httpx.AsyncClient, sandbox: str, host_dir: str, path: str) -> float:
    """A write through the API until the bench's own inotify watch of the folder is readable."""
    fd = _libc.inotify_init1(IN_NONBLOCK | os.O_CLOEXEC)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    try:
        assert _libc.inotify_add_watch(fd, host_dir.encode(), IN_CREATE | IN_MOVED_TO) >= 0
        readable = asyncio.Event()
        asyncio.get_running_loop().add_reader(fd, readable.set)
        started = time.perf_counter()
        await asyncio.gather(write(client, sandbox, path), readable.wait())
        return (time.perf_counter() - started) * 1000
    finally:
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)


async def measure(server: BenchServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        reply = await client.post("/v1/sandboxes", json={"timeout_s": 600})
        assert reply.status_code == 201, reply.text
        sandbox = reply.json()["id"]
        make = (
            f"for d in $(seq 0 {FOLDERS - 1}); do mkdir -p t/d$d;"
            f" for f in $(seq {FILES}); do echo x > t/d$d/f$f; done; done"
        )
        reply = await client.post(f"/v1/sandboxes/{sandbox}/commands", json={"argv": ["sh", "-c", make]})
        assert b'"exit_code":0' in reply.content, reply.text
        init_pid = server.init_pid(sandbox)
        host_dir = f"/proc/{init_pid}/root/home/user/t/d0"

        progress(f"{NAME}: event latency, {ROUNDS} writes each way")
        watched, raw = [], []
        async with watching(client, sandbox, "t/d0", recursive=False) as lines:
            for index in range(ROUNDS):
                started = time.perf_counter()
                await asyncio.gather(
                    write(client, sandbox, f"t/d0/w{index}"), next_create(lines, f"w{index}")
                )
                watched.append((time.perf_counter() - started) * 1000)
                raw.append(await raw_inotify_ms(client, sandbox, host_dir, f"t/d0/r{index}"))
        emit(NAME, "event_latency_p50_ms", median(watched), "ms", median(raw))

        progress(f"{NAME}: opening a recursive watch of {FOLDERS} folders")
        opened, listed = [], []
        for _ in range(5):
            started = time.perf_counter()
            async with watching(client, sandbox, "t", recursive=True):
                opened.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            reply = await client.get(f"/v1/sandboxes/{sandbox}/files/list", params={"path": "t", "depth": 16})
            assert reply.status_code == 200, reply.text
            listed.append((time.perf_counter() - started) * 1000)
        emit(NAME, f"open_recursive_ms_{FOLDERS}_dirs", median(opened), "ms", median(listed))

        progress(f"{NAME}: server CPU with {WATCHES} idle recursive watches")
        quiet = await cpu_per_s(server)
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(WATCHES):
                await stack.enter_async_context(watching(client, sandbox, "t", recursive=True))
            busy = await cpu_per_s(server)
        emit(NAME, f"idle_cpu_ms_per_s_{WATCHES}_watches", busy, "ms", quiet)
        await client.delete(f"/v1/sandboxes/{sandbox}")


async def cpu_per_s(server: BenchServer) -> float:
    before = cpu_ms(server.pid)
    await asyncio.sleep(IDLE_S)
    return (cpu_ms(server.pid) - before) / IDLE_S


def main() -> None:
    with BenchServer() as server:
        asyncio.run(measure(server))


if __name__ == "__main__":
    main()
