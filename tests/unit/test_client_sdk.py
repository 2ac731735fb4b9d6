"""The SDK against a fake transport serving canned answers shaped like docs/api.md (no server)."""

from __future__ import annotations

import email.parser
import io
import json
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from agentcell.client import (
    AsyncCommandHandle,
    AsyncSandbox,
    CommandExitError,
    CommandHandle,
    NotFoundError,
    ProtocolError,
    Sandbox,
)

SANDBOX_ID = "sbx_1"
BASE = f"/v1/sandboxes/{SANDBOX_ID}"
INFO = {
    "id": SANDBOX_ID,
    "template": "base",
    "state": "running",
    "env_keys": [],
    "metadata": {"a": "b"},
    "cpu": 1.0,
    "memory_mb": 512,
    "disk_mb": 1024,
    "created_at": "2025-01-01T00:00:00Z",
    "expires_at": "2025-01-01T00:05:00Z",
}
ENTRY = {
    "path": "/home/user/a.txt",
    "name": "a.txt",
    "type": "file",
    "size": 2,
    "mode": 0o100644,
    "mtime": "2025-01-01T00:00:00Z",
}
PROCESS = {"process_id": "proc_1", "pid": 41, "argv": ["sleep", "100"], "cwd": "/home/user", "running": True}
Handler = Callable[[httpx.Request], httpx.Response]


def ndjson(*events: dict[str, object]) -> httpx.Response:
    body = b"".join(json.dumps(event).encode() + b"\n" for event in events)
    return httpx.Response(200, content=body, headers={"content-type": "application/x-ndjson"})


def start_event() -> dict[str, object]:
    return {"type": "start", "process_id": "proc_9", "pid": 7}


class FakeServer:
    """Routes `METHOD path` to canned answers and records every request with its body."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[str, Handler] = {
            "POST /v1/sandboxes": lambda _: httpx.Response(201, json=INFO),
            f"GET {BASE}": lambda _: httpx.Response(200, json=INFO),
            f"DELETE {BASE}": lambda _: httpx.Response(204),
        }
        self.transport = httpx.MockTransport(self.handle)

    def on(self, route: str, handler: Handler) -> None:
        self.routes[route] = handler

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        handler = self.routes.get(f"{request.method} {request.url.path}")
        if handler is None:
            return httpx.Response(404, json={"code": "not_found", "message": "no route", "request_id": "r"})
        return handler(request)

    def sent(self, route: str) -> list[httpx.Request]:
        return [r for r in self.requests if f"{r.method} {r.url.path}" == route]

    def body(self, route: str) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(self.sent(route)[-1].content)
        return loaded


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


async def test_run_collects_output_in_order_and_calls_back(server: FakeServer) -> None:
    """stdout/stderr are joined, callbacks (sync and async) see each chunk, the end sets the result."""
    server.on(
        f"POST {BASE}/commands",
        lambda _: ndjson(
            start_event(),
            {"type": "stdout", "data": "4"},
            {"type": "stderr", "data": "warn\n"},
            {"type": "stdout", "data": "2\n"},
            {"type": "end", "exit_code": 0},
        ),
    )
    seen: list[str] = []

    async def on_stderr(data: str) -> None:
        seen.append("err:" + data)

    async with await AsyncSandbox.create(transport=server.transport) as sbx:
        result = await sbx.commands.run("echo 42", on_stdout=seen.append, on_stderr=on_stderr)
    assert (result.stdout, result.stderr, result.exit_code) == ("42\n", "warn\n", 0)
    assert (result.process_id, result.pid, result.ok) == ("proc_9", 7, True)
    assert seen == ["4", "err:warn\n", "2\n"]


async def test_request_bodies_follow_the_wire_models(server: FakeServer) -> None:
    """A string is a shell line, a list an argv; foreground waits 60 s by default, background forever."""
    server.on(
        f"POST {BASE}/commands",
        lambda r: (
            httpx.Response(201, json=PROCESS)
            if json.loads(r.content)["background"]
            else ndjson(start_event(), {"type": "end", "exit_code": 0})
        ),
    )
    async with AsyncSandbox.create(transport=server.transport) as sbx:
        await sbx.commands.run("echo hi", env={"A": "1"}, cwd="/tmp", stdin="x")
        assert server.body(f"POST {BASE}/commands") == {
            "cmd": "echo hi",
            "env": {"A": "1"},
            "cwd": "/tmp",
            "stdin": "x",
            "timeout_s": 60.0,
            "background": False,
        }
        handle = await sbx.commands.run(["sleep", "100"], background=True)
        assert server.body(f"POST {BASE}/commands") == {
            "argv": ["sleep", "100"],
            "timeout_s": None,
            "background": True,
        }
        await sbx.commands.run("true", timeout_s=None)
        assert server.body(f"POST {BASE}/commands")["timeout_s"] is None
    assert isinstance(handle, AsyncCommandHandle) and (handle.process_id, handle.pid) == ("proc_1", 41)


async def test_non_zero_exit_is_a_result_unless_checked(server: FakeServer) -> None:
    """Convention: check=False returns the result; check=True raises CommandExitError with it."""
    server.on(
        f"POST {BASE}/commands",
        lambda _: ndjson(
            start_event(),
            {"type": "stderr", "data": "bad\n"},
            {"type": "end", "exit_code": 3},
        ),
    )
    async with AsyncSandbox.create(transport=server.transport) as sbx:
        result = await sbx.commands.run("exit 3")
        assert result.exit_code == 3 and not result.ok
        with pytest.raises(CommandExitError) as info:
            await sbx.commands.run("exit 3", check=True)
    assert info.value.result.exit_code == 3 and info.value.stderr == "bad\n"


async def test_timed_out_command(server: FakeServer) -> None:
    """An end with timed_out gives a result that check() rejects."""
    server.on(
        f"POST {BASE}/commands",
        lambda _: ndjson(
            start_event(),
            {"type": "end", "exit_code": 137, "signal": 9, "timed_out": True, "error": "timed out after 1 s"},
        ),
    )
    async with AsyncSandbox.create(transport=server.transport) as sbx:
        result = await sbx.commands.run("sleep 9", timeout_s=1)
        with pytest.raises(CommandExitError, match="timed out"):
            result.check()
    assert result.timed_out and result.signal == 9 and result.exit_code == 137


@pytest.mark.parametrize(
    "body",
    [
        b'{"type":"start","process_id":"p","pid":1}\n{"type":"stdout","data":"half"}\n',
        b"",
        b'{"type":"start","process_id":"p","pid":1}\nnot json\n',
    ],
)
async def test_stream_without_its_end_raises(server: FakeServer, body: bytes) -> None:
    """A stream cut short, or with a line that is no event, is a ProtocolError, never a result."""
    server.on(f"POST {BASE}/commands", lambda _: httpx.Response(200, content=body))
    async with AsyncSandbox.create(transport=server.transport) as sbx:
        with pytest.raises(ProtocolError):
            await sbx.commands.run("echo")


async def test_background_handle_waits_feeds_stdin_and_signals(server: FakeServer) -> None:
    """Handle and commands.* reach the process routes; pids resolve through the list."""
    proc = f"{BASE}/processes/proc_1"
    server.on(f"POST {BASE}/commands", lambda _: httpx.Response(201, json=PROCESS))
    server.on(
        f"GET {proc}/events",
        lambda _: ndjson(
            {"type": "stdout", "data": "late"},
            {"type": "end", "exit_code": 143, "signal": 15},
        ),
    )
    server.on(f"POST {proc}/stdin", lambda _: httpx.Response(204))
    server.on(f"POST {proc}/signal", lambda _: httpx.Response(204))
    server.on(f"GET {BASE}/processes", lambda _: httpx.Response(200, json={"processes": [PROCESS]}))
    async with AsyncSandbox.create(transport=server.transport) as sbx:
        handle = await sbx.commands.run("cat", background=True)
        await handle.send_stdin("hello\n")
        await handle.signal(15)
        await sbx.commands.kill(41)  # by pid: found through the process list
        result = await handle.wait()
        assert [p.process_id for p in await sbx.commands.list()] == ["proc_1"]
        with pytest.raises(NotFoundError):
            await sbx.commands.kill(999)
    assert server.body(f"POST {proc}/stdin") == {"data": "hello\n", "close": False}
    assert [json.loads(r.content) for r in server.sent(f"POST {proc}/signal")] == [
        {"signal": "SIGTERM"},
        {"signal": "SIGKILL"},
    ]
    assert (result.stdout, result.exit_code, result.signal) == ("late", 143, 15)


async def test_async_with_create_kills_on_exit_and_await_alone_does_not(server: FakeServer) -> None:
    """`async with AsyncSandbox.create()` (with or without await) kills; a plain await leaves it running."""
    async with AsyncSandbox.create(transport=server.transport) as sbx:
        assert sbx.id == SANDBOX_ID and sbx.info.metadata == {"a": "b"}
    assert len(server.sent(f"DELETE {BASE}")) == 1
    with pytest.raises(RuntimeError):
        async with await AsyncSandbox.create(transport=server.transport):
            raise RuntimeError("body failed")
    assert len(server.sent(f"DELETE {BASE}")) == 2
    sbx = await AsyncSandbox.create(template="base", cpu=0.5, transport=server.transport)
    await sbx.aclose()
    assert len(server.sent(f"DELETE {BASE}")) == 2
    assert server.body("POST /v1/sandboxes") == {"template": "base", "cpu": 0.5}


async def test_kill_of_a_gone_sandbox_is_false(server: FakeServer) -> None:
    """kill() of a sandbox that is already gone is False, not an error."""
    server.on(
        f"DELETE {BASE}",
        lambda _: httpx.Response(404, json={"code": "not_found", "message": "gone", "request_id": "r"}),
    )
    async with AsyncSandbox.connect(SANDBOX_ID, transport=server.transport) as sbx:
        assert await sbx.kill() is False


async def test_list_sends_metadata_filters(server: FakeServer) -> None:
    """Metadata filters go out as repeated key=value query parameters."""
    server.on("GET /v1/sandboxes", lambda _: httpx.Response(200, json={"sandboxes": [INFO]}))
    found = await AsyncSandbox.list(
        metadata={"team": "x", "run": "7"}, state="running", transport=server.transport
    )
    assert [s.id for s in found] == [SANDBOX_ID]
    assert server.requests[-1].url.params.get_list("metadata") == ["team=x", "run=7"]
    assert server.requests[-1].url.params["state"] == "running"


async def chunks() -> AsyncIterator[bytes]:
    yield b"as"
    yield b"ync"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"raw", b"raw"),
        ("text é", "text é".encode()),
        (io.BytesIO(b"file"), b"file"),
        ([b"it", b"er"], b"iter"),
    ],
)
async def test_write_streams_any_kind_of_data(server: FakeServer, data: object, expected: bytes) -> None:
    """bytes, str, file objects and iterables are all written as the same bytes."""
    server.on(f"PUT {BASE}/files", lambda _: httpx.Response(200, json=ENTRY))
    async with AsyncSandbox.create(transport=server.transport) as sbx:
        entry = await sbx.files.write("a.txt", data)  # type: ignore[arg-type]
    assert entry.name == "a.txt"
    assert server.sent(f"PUT {BASE}/files")[0].content == expected
    assert server.sent(f"PUT {BASE}/files")[0].url.params["path"] == "a.txt"


async def test_write_from_async_iterator(server: FakeServer) -> None:
    """An async iterator of chunks is streamed as the file's content."""
    server.on(f"PUT {BASE}/files", lambda _: httpx.Response(200, json=ENTRY))
    async with AsyncSandbox.create(transport=server.transport) as sbx:
        await sbx.files.write("a.txt", chunks())
    assert server.sent(f"PUT {BASE}/files")[0].content == b"async"


async def test_read_stat_exists_list(server: FakeServer) -> None:
    """read/read_stream/stat/exists/list parse the canned answers; depth is sent."""
    server.on(f"GET {BASE}/files", lambda _: httpx.Response(200, content=b"hi"))
    server.on(
        f"GET {BASE}/files/stat",
        lambda r: (
            httpx.Response(200, json=ENTRY)
            if r.url.params["path"] == "a.txt"
            else httpx.Response(404, json={"code": "not_found", "message": "no", "request_id": "r"})
        ),
    )
    server.on(f"GET {BASE}/files/list", lambda _: httpx.Response(200, json={"entries": [ENTRY]}))
    async with AsyncSandbox.create(transport=server.transport) as sbx:
        assert await sbx.files.read("a.txt") == b"hi"
        assert b"".join([c async for c in sbx.files.read_stream("a.txt")]) == b"hi"
        assert (await sbx.files.stat("a.txt")).size == 2
        assert await sbx.files.exists("a.txt") and not await sbx.files.exists("b.txt")
        assert [e.name for e in await sbx.files.list("/home/user", depth=2)] == ["a.txt"]
    assert server.sent(f"GET {BASE}/files/list")[0].url.params["depth"] == "2"


async def test_upload_sends_one_multipart_part_per_file(server: FakeServer, tmp_path: Path) -> None:
    """Directories keep their name and inner paths; empty directories are made separately."""
    (tmp_path / "proj" / "sub").mkdir(parents=True)
    (tmp_path / "proj" / "empty").mkdir()
    (tmp_path / "proj" / "a.txt").write_text("A")
    (tmp_path / "proj" / "sub" / "b.txt").write_text("BB")
    (tmp_path / "c.bin").write_bytes(b"\0\1")
    (tmp_path / 'q"x').write_bytes(b"q")
    server.on(f"POST {BASE}/files/upload", lambda _: httpx.Response(200, json={"entries": [ENTRY]}))
    server.on(f"POST {BASE}/files/mkdir", lambda _: httpx.Response(200, json=ENTRY))
    server.on(f"PUT {BASE}/files", lambda _: httpx.Response(200, json=ENTRY))
    moved: list[int] = []
    async with AsyncSandbox.create(transport=server.transport) as sbx:
        await sbx.files.upload(
            [tmp_path / "proj", tmp_path / "c.bin", tmp_path / 'q"x'],
            "/home/user/dst",
            on_progress=moved.append,
        )
    request = server.sent(f"POST {BASE}/files/upload")[0]
    assert request.url.params["dir"] == "/home/user/dst"
    message = email.parser.BytesParser().parsebytes(
        f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode() + request.content
    )
    parts = {part.get_filename(): part.get_payload(decode=True) for part in message.get_payload()}  # type: ignore[union-attr]
    assert parts == {"proj/a.txt": b"A", "proj/sub/b.txt": b"BB", "c.bin": b"\0\1"}
    assert server.body(f"POST {BASE}/files/mkdir") == {"path": "/home/user/dst/proj/empty"}
    put = server.sent(f"PUT {BASE}/files")  # a name multipart could garble goes up on its own
    assert [(r.url.params["path"], r.content) for r in put] == [('/home/user/dst/q"x', b"q")]
    assert sum(moved) == 6


def test_sync_twin_runs_on_its_own_loop_thread_and_cleans_up(server: FakeServer) -> None:
    """`with Sandbox.create()` works like the async one and leaves no thread behind."""
    server.on(
        f"POST {BASE}/commands",
        lambda _: ndjson(
            start_event(),
            {"type": "stdout", "data": "42\n"},
            {"type": "end", "exit_code": 0},
        ),
    )
    server.on(f"GET {BASE}/files", lambda _: httpx.Response(200, content=b"x" * 10))
    server.on(
        f"POST {BASE}/commands",
        lambda r: (
            httpx.Response(201, json=PROCESS)
            if json.loads(r.content)["background"]
            else ndjson(start_event(), {"type": "stdout", "data": "42\n"}, {"type": "end", "exit_code": 0})
        ),
    )
    before = threading.active_count()
    with Sandbox.create(transport=server.transport) as sbx:
        assert threading.active_count() == before + 1
        assert sbx.commands.run("echo $((6*7))").stdout == "42\n"
        assert isinstance(sbx.commands.run("sleep 100", background=True), CommandHandle)
        assert b"".join(sbx.files.read_stream("a")) == b"x" * 10
    assert len(server.sent(f"DELETE {BASE}")) == 1
    assert threading.active_count() == before
    sbx.close()  # idempotent


def test_sync_call_from_a_callback_is_refused_not_deadlocked(server: FakeServer) -> None:
    """A sync SDK call inside a callback raises instead of hanging."""
    server.on(
        f"POST {BASE}/commands",
        lambda _: ndjson(
            start_event(),
            {"type": "stdout", "data": "x"},
            {"type": "end", "exit_code": 0},
        ),
    )
    with Sandbox.create(transport=server.transport) as sbx, pytest.raises(RuntimeError, match="deadlock"):
        sbx.commands.run("echo", on_stdout=lambda _: sbx.get_info())


def test_sync_list_and_errors(server: FakeServer) -> None:
    """Sync connect raises NotFoundError; sync list works without a Sandbox."""
    with pytest.raises(NotFoundError):
        Sandbox.connect("sbx_nope", transport=server.transport)
    server.on("GET /v1/sandboxes", lambda _: httpx.Response(200, json={"sandboxes": [INFO]}))
    assert [s.id for s in Sandbox.list(transport=server.transport)] == [SANDBOX_ID]
