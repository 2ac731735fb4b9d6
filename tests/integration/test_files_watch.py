"""GET /v1/sandboxes/{id}/files/watch end to end: the SDK (async and sync), the CLI and the bare
API against the shared real server (Linux driver); changes made by commands in the sandbox and
through the files API."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from agentcell.client import AsyncSandbox, FileEvent, Sandbox
from agentcell.server.scheduler.watch_streams import MAX_WATCHES
from tests.conftest import ServerProcess
from tests.integration.test_cli import AGENTCELL

RUN = {"suite": "test_files_watch", "run": uuid.uuid4().hex[:12]}
DEADLINE_S = 30.0
"""how long a poll waits for what must come (a bound on a hang, not on speed)"""


@pytest.fixture
async def sbx(server_url: str) -> AsyncIterator[AsyncSandbox]:
    async with AsyncSandbox.create(api_url=server_url, metadata=RUN) as sandbox:
        await sandbox.files.make_dir("d")
        yield sandbox


def inotify_fds(server: ServerProcess) -> int:
    fd_dir = Path(f"/proc/{server.proc.pid}/fd")
    count = 0
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):  # (closed meanwhile)
            count += os.readlink(fd_dir / fd) == "anon_inode:inotify"
    return count


def wait_for(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


async def test_commands_changes_come_in_order_with_their_paths(sbx: AsyncSandbox) -> None:
    """A recursive watch sees a command's file made, written and removed, and the directories it
    made with what they hold, each change after the one it follows; names are relative to the
    watched directory, paths absolute."""
    expected: list[tuple[str, str]] = [("create", "f"), ("write", "f"), ("remove", "f")]
    made: list[tuple[str, str]] = [
        ("create", "a"),
        ("create", "a/b"),
        ("create", "a/b/g"),
        ("write", "a/b/g"),
    ]
    seen: list[FileEvent] = []
    async with sbx.files.watch("d", recursive=True) as watch:
        assert watch.path == "/home/user/d"
        await sbx.commands.run("echo x > d/f; mkdir -p d/a/b; echo y > d/a/b/g; rm d/f", check=True)
        while not set(expected + made) <= {(e.kind, e.name) for e in seen}:
            seen.append(await anext(watch))
    events: list[tuple[str, str]] = [(e.kind, e.name) for e in seen]
    assert set(events) == set(expected + made), events
    for changes in (expected, made):
        assert all(events.index(a) < events.index(b) for a, b in itertools.pairwise(changes)), events
    assert all(e.path == f"/home/user/d/{e.name}" for e in seen), seen


async def test_a_files_api_write_is_a_create_then_a_write_and_a_rewrite_a_write(sbx: AsyncSandbox) -> None:
    """A write through the files API (a temp file renamed over its target) shows as envd shows a
    write in place: `create`, `write` for a new file, `write` alone for one it replaces; the
    temp file is never seen."""
    async with sbx.files.watch("/home/user/d") as watch:
        await sbx.files.write("d/w.txt", b"one")
        first = [await anext(watch), await anext(watch)]
        await sbx.files.write("d/w.txt", b"two")
        await sbx.files.write("d/mark", b"")  # (what follows the rewrite's events)
        rest = [await anext(watch) for _ in range(3)]
    path = "/home/user/d/w.txt"
    assert first == [FileEvent("create", "w.txt", path), FileEvent("write", "w.txt", path)]
    assert rest == [
        FileEvent("write", "w.txt", path),
        FileEvent("create", "mark", "/home/user/d/mark"),
        FileEvent("write", "mark", "/home/user/d/mark"),
    ]


def test_sync_watch_sees_a_change_and_leaving_the_loop_closes_the_servers_watch(
    server_url: str, shared_server: ServerProcess
) -> None:
    """`for event in sbx.files.watch(...)` yields the changes; `break` closes the stream, and the
    server its inotify instance."""
    held_before = inotify_fds(shared_server)
    with Sandbox.create(api_url=server_url, metadata=RUN) as sbx:
        sbx.files.make_dir("d")
        sbx.commands.run("i=0; while :; do i=$((i+1)); : > d/f$i; sleep 0.2; done", background=True)
        for event in sbx.files.watch("d"):
            held_while_open = inotify_fds(shared_server)
            assert event.kind == "create" and re.fullmatch(r"f\d+", event.name), event
            break
        assert held_while_open == held_before + 1
        assert wait_for(lambda: inotify_fds(shared_server) == held_before), inotify_fds(shared_server)


async def test_a_killed_sandbox_ends_the_watch(sbx: AsyncSandbox) -> None:
    """Killing the sandbox ends the stream with its `end`: the loop stops, `ended` says why."""
    async with sbx.files.watch("/home/user", recursive=True) as watch:
        await sbx.kill()
        async for _ in watch:
            pass
    assert watch.ended is not None and "sandbox" in watch.ended, watch.ended


def test_refusals_come_before_the_stream_as_envelopes(api: httpx.Client, rest_sandbox: str) -> None:
    """Unknown sandbox 404, missing directory 404, a file 400, `..` 400, a `recursive` that is not
    a boolean 400: each an error envelope with its request id, saying what to change."""
    assert api.post(f"/v1/sandboxes/{rest_sandbox}/files/mkdir", json={"path": "d"}).status_code == 200
    assert (
        api.put(f"/v1/sandboxes/{rest_sandbox}/files", params={"path": "d/f"}, content=b"x").status_code
        == 200
    )
    cases = [
        ("sbx_0000000000000000", {"path": "d"}, 404, "not found"),
        (rest_sandbox, {"path": "nowhere"}, 404, "no such file or directory"),
        (rest_sandbox, {"path": "d/f"}, 400, "not a directory; watch a directory"),
        (rest_sandbox, {"path": "d/../d"}, 400, "'..'"),
        (rest_sandbox, {"path": "d", "recursive": "maybe"}, 400, "recursive"),
    ]
    for sandbox_id, params, status, says in cases:
        reply = api.get(f"/v1/sandboxes/{sandbox_id}/files/watch", params=params)
        body = reply.json()
        assert reply.status_code == status, (params, reply.text)
        assert says in body["message"] and body["request_id"] and body["code"], (params, body)


def test_a_sandbox_holds_at_most_32_watches(api: httpx.Client, rest_sandbox: str) -> None:
    """The 33rd watch at once is refused (429, `quota_exceeded`); a watch that ends gives its
    place back."""
    url = f"/v1/sandboxes/{rest_sandbox}/files/watch"
    with contextlib.ExitStack() as streams:
        opened = []  # (each stream's line iterator: dropping one closes its stream)
        for _ in range(MAX_WATCHES):
            reply = streams.enter_context(api.stream("GET", url, params={"path": "/home/user"}))
            lines = reply.iter_lines()
            assert reply.status_code == 200 and json.loads(next(lines))["type"] == "start"
            opened.append((reply, lines))
        refused = api.get(url, params={"path": "/home/user"})
        assert refused.status_code == 429, refused.text
        body = refused.json()
        assert body["code"] == "quota_exceeded" and body["request_id"]
        assert body["message"] == "a sandbox holds at most 32 watches; stop one first"
        opened[0][0].close()

        def another_opens() -> bool:
            with api.stream("GET", url, params={"path": "/home/user"}) as reply:
                return reply.status_code == 200

        assert wait_for(another_opens)


def test_the_route_is_in_openapi_with_its_parameters(api: httpx.Client) -> None:
    operation = api.get("/openapi.json").json()["paths"]["/v1/sandboxes/{sandbox_id}/files/watch"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert {"sandbox_id", "path", "recursive"} <= set(parameters)
    assert parameters["recursive"]["description"] and parameters["path"]["description"]
    assert "application/x-ndjson" in operation["responses"]["200"]["content"]


def test_the_cli_prints_each_change_until_interrupted(
    server_url: str, api: httpx.Client, rest_sandbox: str
) -> None:
    """`agentcell watch ID:DIR` prints `create  NAME` for a file made there; Ctrl-C ends it (130).
    The CLI runs as from a terminal, with Python's own ^C handler: a background job's children
    (these tests run as one in CI) start with SIGINT ignored, and rightly go on past a ^C."""
    loop = "mkdir -p d; i=0; while :; do i=$((i+1)); : > d/f$i; sleep 0.2; done"
    started = api.post(f"/v1/sandboxes/{rest_sandbox}/commands", json={"cmd": loop, "background": True})
    assert started.status_code == 201, started.text
    assert wait_for(
        lambda: api.get(f"/v1/sandboxes/{rest_sandbox}/files/stat", params={"path": "d"}).is_success
    )
    argv = [AGENTCELL, "--url", server_url, "watch", f"{rest_sandbox}:d", "--recursive"]
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, preexec_fn=_default_sigint
    ) as cli:
        assert cli.stdout is not None
        line = cli.stdout.readline()
        os.kill(cli.pid, signal.SIGINT)
        assert cli.wait() == 130
    assert re.fullmatch(r"create  f\d+\n", line), line


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # (Python then installs its KeyboardInterrupt)
