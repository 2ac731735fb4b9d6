"""The Python SDK against a real server (`server_url`, from conftest.py) and real sandboxes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agentcell.client import (
    AgentcellConnectionError,
    AsyncSandbox,
    CommandExitError,
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    Sandbox,
)
from agentcell.server.scheduler.processes import FINISHED_KEPT
from tests.conftest import AUTH, ServerFactory

MIB = 1 << 20
RUN = {"suite": "test_sdk", "run": uuid.uuid4().hex[:12]}


@pytest.fixture
async def sbx(server_url: str) -> AsyncIterator[AsyncSandbox]:
    async with AsyncSandbox.create(api_url=server_url, metadata=RUN, env={"FROM_CREATE": "yes"}) as sandbox:
        yield sandbox


async def is_gone(server_url: str, sandbox_id: str) -> bool:
    try:
        async with AsyncSandbox.connect(sandbox_id, api_url=server_url) as found:
            return found.info.state != "running"
    except NotFoundError:
        return True


async def test_run_returns_output_and_exit_code(sbx: AsyncSandbox) -> None:
    """`echo $((6*7))` gives "42\\n" and exit code 0; the shell line runs under bash."""
    result = await sbx.commands.run("echo $((6*7))")
    assert (result.stdout, result.stderr, result.exit_code, result.ok) == ("42\n", "", 0, True)
    assert result.pid and result.process_id


async def test_non_zero_exit_and_stderr(sbx: AsyncSandbox) -> None:
    """check=False (the default) returns the failed result; check=True raises it."""
    result = await sbx.commands.run("echo out; echo oops >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "oops\n", 3)
    with pytest.raises(CommandExitError) as info:
        await sbx.commands.run("exit 5", check=True)
    assert info.value.result.exit_code == 5


async def test_env_cwd_argv_and_stdin(sbx: AsyncSandbox) -> None:
    """Per-command env joins the sandbox's env; cwd, argv mode and stdin reach the process."""
    result = await sbx.commands.run("echo $FOO $FROM_CREATE; pwd", env={"FOO": "bar"}, cwd="/tmp")
    assert result.stdout == "bar yes\n/tmp\n"
    assert (await sbx.commands.run(["printf", "%s|", "a b", "c"])).stdout == "a b|c|"
    assert (await sbx.commands.run("cat", stdin="piped in")).stdout == "piped in"
    assert (await sbx.commands.run("pwd")).stdout == "/home/user\n"


async def test_timeout_kills_and_reports_timed_out(sbx: AsyncSandbox) -> None:
    """timeout_s kills the command early and the result says timed_out."""
    started = time.monotonic()
    result = await sbx.commands.run("sleep 30", timeout_s=1)
    assert result.timed_out and not result.ok
    assert time.monotonic() - started < 15


async def test_output_streams_to_callbacks_as_it_comes(sbx: AsyncSandbox) -> None:
    """The first chunk arrives while the command still runs, not at its end."""
    arrivals: list[tuple[float, str]] = []
    started = time.monotonic()
    result = await sbx.commands.run(
        "echo first; sleep 2; echo second >&2", on_stderr=lambda d: arrivals.append((time.monotonic(), d)),
        on_stdout=lambda d: arrivals.append((time.monotonic(), d)),
    )  # fmt: skip
    assert result.exit_code == 0 and [d for _, d in arrivals] == ["first\n", "second\n"]
    assert arrivals[0][0] - started < 1.5 <= arrivals[1][0] - started


async def test_a_foreground_command_ends_when_its_client_leaves(sbx: AsyncSandbox, server_url: str) -> None:
    """Closing the stream of a silent foreground command kills the command: nothing that no one
    listens to is left running in the sandbox."""
    marker = f"sleep {3000 + os.getpid() % 1000}"
    async with httpx.AsyncClient(base_url=server_url, headers=AUTH, timeout=30) as client:
        command = {"cmd": f"echo started; exec {marker}", "timeout_s": None}
        async with client.stream("POST", f"/v1/sandboxes/{sbx.id}/commands", json=command) as reply:
            async for line in reply.aiter_lines():
                if "started" in line:
                    break  # leaving the block closes the connection with the stream unread
    listing = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"
    deadline = time.monotonic() + 5
    while marker in (await sbx.commands.run(listing)).stdout:
        assert time.monotonic() < deadline, f"{marker!r} still runs after its client left"
        await asyncio.sleep(0.05)
    assert all(not p.running for p in await sbx.commands.list())


async def test_a_slow_reader_gets_every_line_of_a_fast_command(sbx: AsyncSandbox, server_url: str) -> None:
    """A command writing far faster than its client reads (7 MB here; the server buffers 1 MiB)
    loses nothing: it waits on its pipe until the client catches up."""
    lines = 1_000_000
    async with httpx.AsyncClient(base_url=server_url, headers=AUTH, timeout=60) as client:
        command = {"argv": ["seq", "1", str(lines)]}
        async with client.stream("POST", f"/v1/sandboxes/{sbx.id}/commands", json=command) as reply:
            events = []
            async for line in reply.aiter_lines():
                events.append(json.loads(line))
                if len(events) % 20 == 0:
                    await asyncio.sleep(0.01)  # a reader slower than `seq`
    stdout = "".join(e["data"] for e in events if e["type"] == "stdout")
    assert events[-1]["type"] == "end" and events[-1]["exit_code"] == 0
    assert stdout == "".join(f"{n}\n" for n in range(1, lines + 1))


async def test_a_sandbox_ends_while_a_client_holds_a_stream_it_does_not_read(server_url: str) -> None:
    """Holding a command's output (nothing dropped) never holds up the sandbox's kill."""
    async with httpx.AsyncClient(base_url=server_url, headers=AUTH, timeout=30) as client:
        sandbox_id = (await client.post("/v1/sandboxes", json={"timeout_s": 60})).json()["id"]
        command = {"argv": ["yes"], "timeout_s": None}
        async with client.stream("POST", f"/v1/sandboxes/{sandbox_id}/commands", json=command) as reply:
            chunks = reply.aiter_bytes()
            await anext(chunks)  # then the stream stays open, unread: `yes` fills every buffer
            await asyncio.sleep(0.5)
            started = time.monotonic()
            async with httpx.AsyncClient(base_url=server_url, headers=AUTH, timeout=30) as other:
                assert (await other.delete(f"/v1/sandboxes/{sandbox_id}")).status_code == 204
            assert time.monotonic() - started < 10


async def test_a_command_cut_off_by_its_sandbox_s_end_says_so(server_url: str) -> None:
    """A foreground command the sandbox's kill stopped ends with an `error` that says so: not to
    be taken for the command exiting on SIGTERM by itself."""
    async with AsyncSandbox.create(api_url=server_url, timeout_s=60) as sbx:
        running = asyncio.create_task(sbx.commands.run("echo started; sleep 30", timeout_s=None))
        await asyncio.sleep(0.5)
        await sbx.kill()
        result = await asyncio.wait_for(running, 10)
    assert result.exit_code in (137, 143) and result.error is not None
    assert "the sandbox stopped while the command ran" in result.error


async def test_commands_cut_off_by_a_graceful_shutdown_end_saying_so(server_factory: ServerFactory) -> None:
    """SIGTERM mid-command: a command that finishes within the drain ends as usual; one still
    running a second before the drain's deadline is stopped, and its stream ends with an `end`
    whose error says the server is shutting down (not a cut connection), and so does a code run;
    the server exits 0."""
    server = server_factory(env={"AGENTCELL_DRAIN_TIMEOUT_S": "3"})
    sbx = await AsyncSandbox.create(api_url=server.url, timeout_s=60)
    counting = "for i in $(seq 100); do echo $i; sleep .2; done"
    assert (await sbx.run_code("1")).status == "ok"  # (the kernel is up before the signal)
    long = asyncio.create_task(sbx.commands.run(["bash", "-c", counting], timeout_s=None))
    short = asyncio.create_task(sbx.commands.run("sleep 1; echo done", timeout_s=None))
    code = asyncio.create_task(
        sbx.run_code(
            "import time\nfor i in range(100):\n    print(i, flush=True); time.sleep(0.2)", timeout_s=None
        )
    )
    await asyncio.sleep(0.5)
    server.proc.send_signal(signal.SIGTERM)
    try:
        finished, stopped, ran = await asyncio.wait_for(asyncio.gather(short, long, code), 10)
    finally:
        await sbx.aclose()
    assert (finished.stdout, finished.exit_code, finished.error) == ("done\n", 0, None)
    assert stopped.exit_code == 137 and stopped.error == "the server is shutting down"
    assert stopped.stdout.startswith("1\n2\n3\n")
    assert ran.status == "kernel_died" and ran.error is not None, ran  # an end, not a cut stream
    assert "the server is shutting down" in ran.error.value and ran.logs.stdout[:1] == ["0\n"]
    assert await asyncio.to_thread(server.proc.wait, 30) == 0, server.log()


async def test_stdin_the_command_does_not_read_is_no_error(sbx: AsyncSandbox) -> None:
    """Given more stdin than it reads (1 MiB here, a pipe holds 64 KiB), a command still runs to its
    end with its output, as behind a shell pipe; and it is not left in the process list."""
    result = await sbx.commands.run("head -n 1; sleep 0.5; echo done", stdin="line\n" * 200_000)
    assert (result.stdout, result.exit_code) == ("line\ndone\n", 0)
    assert await sbx.commands.list() == []


async def test_stdin_writes_to_a_process_that_does_not_read_are_bounded(sbx: AsyncSandbox) -> None:
    """Writing stdin to a process that never reads answers at once (the data waits in its pipe);
    a second write while the first still waits is refused with a 409 that says why, instead of
    hanging and piling up in the server's memory."""
    sleeper = await sbx.commands.run(["sleep", "60"], background=True, timeout_s=None)
    started = time.monotonic()
    await sleeper.send_stdin("x" * (4 << 20))
    assert time.monotonic() - started < 10
    with pytest.raises(ConflictError, match="has not yet read the input written before"):
        await sleeper.send_stdin("more")
    await sleeper.kill()
    assert (await sleeper.wait()).exit_code == 137


async def test_finished_background_processes_are_not_kept_forever(sbx: AsyncSandbox, server_url: str) -> None:
    """Only the most recent finished background processes stay listed (with their output): the
    table makes room when a process is added, so the last one finished after that is there too."""
    async with httpx.AsyncClient(base_url=server_url, headers=AUTH, timeout=30) as client:
        for n in range(FINISHED_KEPT + 5):
            command = {"argv": ["echo", str(n)], "background": True}
            reply = await client.post(f"/v1/sandboxes/{sbx.id}/commands", json=command)
            assert reply.status_code == 201, reply.text
            await (await sbx.commands.connect(reply.json()["process_id"])).wait()
    listed = await sbx.commands.list()
    assert not any(p.running for p in listed)
    assert sorted(int(p.argv[1]) for p in listed) == list(range(FINISHED_KEPT + 5))[-FINISHED_KEPT - 1 :]


async def test_background_process_list_stdin_and_wait(sbx: AsyncSandbox) -> None:
    """A background process is listed while running, reads stdin sent later, and wait() gives its output."""
    handle = await sbx.commands.run("cat; echo done", background=True)
    listed = {p.process_id: p for p in await sbx.commands.list()}
    assert listed[handle.process_id].running and listed[handle.process_id].pid == handle.pid
    await handle.send_stdin("hello\n")
    await handle.send_stdin("world\n", close=True)
    result = await handle.wait()
    assert (result.stdout, result.exit_code) == ("hello\nworld\ndone\n", 0)
    assert not {p.process_id: p for p in await sbx.commands.list()}[handle.process_id].running


async def test_background_process_killed_by_pid_or_signalled(sbx: AsyncSandbox) -> None:
    """Kill by pid gives 128+9; SIGTERM through the handle gives 128+15."""
    sleeper = await sbx.commands.run("sleep 100", background=True)
    await sbx.commands.kill(sleeper.pid)
    assert (await sleeper.wait()).exit_code == 137
    trapped = await sbx.commands.run(["sleep", "100"], background=True)
    await trapped.signal("SIGTERM")
    result = await trapped.wait()
    assert result.exit_code == 143 and result.signal == 15


async def test_background_output_can_be_followed_later(sbx: AsyncSandbox) -> None:
    """A handle found again by process id replays the buffered output and ends with `end`."""
    handle = await sbx.commands.run("echo early; sleep 0.5; echo late", background=True)
    reattached = await sbx.commands.connect(handle.process_id)
    events = [event async for event in reattached.events()]
    assert events[-1].type == "end"
    assert "".join(e.data for e in events if e.type == "stdout") == "early\nlate\n"


async def test_file_operations(sbx: AsyncSandbox) -> None:
    """write/read/stat/make_dir/list/rename/exists/remove agree with each other and with the shell."""
    entry = await sbx.files.write("/home/user/dir/a.txt", "héllo")
    assert (entry.path, entry.type, entry.size) == ("/home/user/dir/a.txt", "file", len("héllo".encode()))
    assert await sbx.files.read("dir/a.txt") == "héllo".encode()
    assert await sbx.files.read_text("/home/user/dir/a.txt") == "héllo"
    assert (await sbx.files.stat("dir")).type == "dir"
    await sbx.files.make_dir("dir/x/y")
    names = {e.path for e in await sbx.files.list("/home/user/dir", depth=2)}
    assert {"/home/user/dir/a.txt", "/home/user/dir/x", "/home/user/dir/x/y"} <= names
    moved = await sbx.files.rename("dir/a.txt", "dir/b.txt")
    assert moved.name == "b.txt" and not await sbx.files.exists("dir/a.txt")
    assert (await sbx.commands.run("cat dir/b.txt")).stdout == "héllo"
    await sbx.files.remove("dir")
    assert not await sbx.files.exists("dir")


async def test_twenty_mib_round_trip(sbx: AsyncSandbox, tmp_path: Path) -> None:
    """20 MiB goes up from a file object and comes back byte for byte, streamed both ways."""
    data = os.urandom(20 * MIB)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    with local.open("rb") as file:
        entry = await sbx.files.write("big.bin", file)
    assert entry.size == len(data)
    remote_sum = (await sbx.commands.run("sha256sum big.bin")).stdout.split()[0]
    assert remote_sum == hashlib.sha256(data).hexdigest()
    assert await sbx.files.read("big.bin") == data
    streamed = hashlib.sha256()
    async for chunk in sbx.files.read_stream("big.bin"):
        streamed.update(chunk)
    assert streamed.hexdigest() == remote_sum
    await sbx.files.download("big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


async def test_upload_and_archive_round_trip(sbx: AsyncSandbox, tmp_path: Path) -> None:
    """A local tree uploaded (empty dirs kept) comes back identical through the archive endpoint."""
    tree = tmp_path / "proj"
    (tree / "src" / "pkg").mkdir(parents=True)
    (tree / "empty").mkdir()
    (tree / "README").write_text("readme\n")
    (tree / "src" / "pkg" / "mod.py").write_text("print(6*7)\n")
    (tmp_path / "loose.txt").write_text("loose")
    written = await sbx.files.upload([tree, tmp_path / "loose.txt"], "/home/user/up")
    assert {e.path for e in written} == {
        "/home/user/up/proj/README", "/home/user/up/proj/src/pkg/mod.py", "/home/user/up/loose.txt",
    }  # fmt: skip
    assert (await sbx.files.stat("up/proj/empty")).type == "dir"
    archive = b"".join([chunk async for chunk in sbx.files.download_archive("up/proj")])
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert {"proj", "proj/README", "proj/src/pkg/mod.py", "proj/empty"} <= set(tar.getnames())
    await sbx.files.download("up/proj", tmp_path / "back")
    assert (tmp_path / "back" / "src" / "pkg" / "mod.py").read_text() == "print(6*7)\n"
    assert (tmp_path / "back" / "README").read_text() == "readme\n"
    assert (tmp_path / "back" / "empty").is_dir()


async def test_errors_are_typed(sbx: AsyncSandbox, server_url: str) -> None:
    """Unknown ids and files are NotFoundError; refused input is InvalidArgumentError (server or SDK side)."""
    with pytest.raises(NotFoundError) as info:
        await AsyncSandbox.connect("sbx_doesnotexist", api_url=server_url)
    assert info.value.status == 404 and info.value.request_id
    with pytest.raises(NotFoundError):
        await sbx.files.read("/home/user/no-such-file")
    with pytest.raises(InvalidArgumentError) as bad:
        await sbx.files.read("/home/user/../../etc/passwd")  # refused by the server, not the SDK
    assert bad.value.status == 400
    with pytest.raises(InvalidArgumentError):
        await sbx.commands.run("true", timeout_s=-1)  # refused by the wire model before sending


async def test_info_timeout_and_list(sbx: AsyncSandbox, server_url: str) -> None:
    """get_info reflects create's arguments, set_timeout moves expires_at, list filters by metadata."""
    info = await sbx.get_info()
    assert info.state == "running" and info.metadata == RUN and "FROM_CREATE" in info.env_keys
    renewed = await sbx.set_timeout(3600)
    assert renewed.expires_at > info.expires_at
    found = await AsyncSandbox.list(metadata=RUN, api_url=server_url)
    assert sbx.id in {s.id for s in found}
    assert await AsyncSandbox.list(metadata={"run": "nobody"}, api_url=server_url) == []


async def test_async_with_create_kills_on_exit(server_url: str) -> None:
    """Both `async with AsyncSandbox.create()` and `async with await …` kill the sandbox."""
    async with AsyncSandbox.create(api_url=server_url, metadata=RUN) as first:
        assert (await first.commands.run("true")).ok
    async with await AsyncSandbox.create(api_url=server_url, metadata=RUN) as second:
        pass
    assert await is_gone(server_url, first.id) and await is_gone(server_url, second.id)


async def test_unreachable_server_raises_connection_error() -> None:
    """No server: AgentcellConnectionError naming the URL."""
    with pytest.raises(AgentcellConnectionError, match=r"127\.0\.0\.1:1"):
        await AsyncSandbox.create(api_url="http://127.0.0.1:1")


def test_sync_twin_essentials(server_url: str, tmp_path: Path) -> None:
    """The sync Sandbox runs commands, moves files, drives background processes, and kills on exit."""
    with Sandbox.create(api_url=server_url, metadata=RUN) as sandbox:
        assert sandbox.commands.run("echo $((6*7))").stdout == "42\n"
        assert sandbox.commands.run("exit 3").exit_code == 3
        chunks: list[str] = []
        sandbox.commands.run("echo a; echo b", on_stdout=chunks.append)
        assert "".join(chunks) == "a\nb\n"
        sandbox.files.write("s.txt", b"sync")
        assert sandbox.files.read("s.txt") == b"sync"
        assert b"".join(sandbox.files.read_stream("s.txt")) == b"sync"
        handle = sandbox.commands.run("sleep 100", background=True)
        assert handle.pid in {p.pid for p in sandbox.commands.list() if p.running}
        handle.kill()
        assert handle.wait().exit_code == 137
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "f").write_text("f")
        sandbox.files.upload(tmp_path / "d", "/home/user")
        sandbox.files.download("/home/user/d", tmp_path / "d2")
        assert (tmp_path / "d2" / "f").read_text() == "f"
        with pytest.raises(NotFoundError):
            sandbox.files.stat("nope")
        sandbox_id = sandbox.id
    with pytest.raises(NotFoundError):
        Sandbox.connect("sbx_doesnotexist", api_url=server_url)
    assert all(s.id != sandbox_id for s in Sandbox.list(metadata=RUN, state="running", api_url=server_url))
