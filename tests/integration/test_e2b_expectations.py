"""What E2B's own SDK test suites expect of a sandbox, checked in our words with the pinned `e2b`
SDK (sync) against a real agentcell server: the edges test_e2b.py does not reach (connect and
timeouts, paging across paused and running sandboxes, threads, command output and stdin edges,
file entry details, recursive watches, terminals). docs/e2b.md ("E2B's own test suites") says
which suites we read and which of their expectations agentcell does not meet.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import httpx
import pytest
from e2b import (
    ALL_TRAFFIC,
    CommandExitException,
    FilesystemEventType,
    FileType,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxNetworkOpts,
    SandboxQuery,
    SandboxState,
    TimeoutException,
)
from e2b.sandbox.commands.command_handle import PtySize

T = TypeVar("T")


@pytest.fixture(scope="module")
def sbx(e2b_env: str) -> Iterator[Sandbox]:
    """One sandbox for the tests below that use their own paths and processes."""
    sandbox = Sandbox.create(timeout=300, metadata={"suite": "e2b-expectations"})
    yield sandbox
    sandbox.kill()


def in_threads(call: Callable[[int], T], count: int = 8) -> list[T]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


def wait_until(predicate: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


# -- lifecycle -------------------------------------------------------------------------------------


def test_connect_extends_a_running_sandbox_but_never_shortens_it(sbx: Sandbox) -> None:
    before = Sandbox.get_info(sbx.sandbox_id).end_at
    Sandbox.connect(sbx.sandbox_id, timeout=10)
    assert Sandbox.get_info(sbx.sandbox_id).end_at == before
    Sandbox.connect(sbx.sandbox_id, timeout=600)
    assert Sandbox.get_info(sbx.sandbox_id).end_at > before
    sbx.set_timeout(300)


def test_a_secure_sandbox_and_its_connection_carry_envd_version_and_token(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    made = make_sandbox(secure=True)
    joined = Sandbox.connect(made.sandbox_id)
    for sandbox in (made, joined):
        assert sandbox.is_running()
        assert sandbox._envd_version is not None and sandbox._envd_access_token is not None
    assert joined.files.make_dir("through_connect") is True
    assert joined.files.list("through_connect") == []
    assert made.files.exists("through_connect")


def test_a_shortened_timeout_ends_the_sandbox_unless_lengthened_again(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    ending, kept = make_sandbox(), make_sandbox()
    ending.set_timeout(1)
    kept.set_timeout(1)
    kept.set_timeout(30)
    wait_until(lambda: not ending.is_running(), 6, "still running 6 s after a 1 s timeout")
    assert kept.is_running()


def test_list_pages_paused_and_running_sandboxes_newest_first(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    tag = {"case": f"paging-{uuid.uuid4().hex}"}
    running, paused = make_sandbox(metadata=tag), make_sandbox(metadata=tag)
    assert paused.beta_pause() is True
    both = SandboxQuery(metadata=tag, state=[SandboxState.RUNNING, SandboxState.PAUSED])
    pages = Sandbox.list(query=both, limit=1)
    first = pages.next_items()
    assert [(s.sandbox_id, s.state) for s in first] == [(paused.sandbox_id, SandboxState.PAUSED)]
    assert pages.has_next and pages.next_token is not None
    second = pages.next_items()
    assert [(s.sandbox_id, s.state) for s in second] == [(running.sandbox_id, SandboxState.RUNNING)]
    assert not pages.has_next and pages.next_token is None
    only_running = Sandbox.list(query=SandboxQuery(metadata=tag, state=[SandboxState.RUNNING]))
    assert [s.sandbox_id for s in only_running.next_items()] == [running.sandbox_id]
    assert Sandbox.kill(running.sandbox_id) is True
    walked: list[str] = []
    every = Sandbox.list(query=SandboxQuery(metadata=tag, state=[SandboxState.RUNNING, SandboxState.PAUSED]))
    while every.has_next:
        walked += [s.sandbox_id for s in every.next_items()]
    assert walked == [paused.sandbox_id]
    assert Sandbox.kill("nonexistingsandbox") is False


def test_on_timeout_pause_as_an_action_and_a_zero_timeout(make_sandbox: Callable[..., Sandbox]) -> None:
    """The dict form of `on_timeout` (with `keep_memory` left to its default) pauses at the
    timeout; `set_timeout(0)` makes that now; connect resumes the same sandbox with its files. An
    `on_timeout` of None is a plain sandbox."""
    sandbox = make_sandbox(lifecycle={"on_timeout": {"action": "pause", "keep_memory": None}})
    sandbox.files.write("kept.txt", "across the pause")
    sandbox.set_timeout(0)
    wait_until(
        lambda: sandbox.get_info().state == SandboxState.PAUSED, 10, "not paused 10 s after set_timeout(0)"
    )
    assert not sandbox.is_running()
    resumed = sandbox.connect()
    assert resumed.sandbox_id == sandbox.sandbox_id and resumed.is_running()
    assert resumed.files.read("kept.txt") == "across the pause"
    assert make_sandbox(lifecycle={"on_timeout": None}).is_running()


def test_calls_from_many_threads(sbx: Sandbox) -> None:
    sbx.files.write("threads.txt", "read by eight threads")
    ids = in_threads(lambda _: Sandbox.get_info(sbx.sandbox_id).sandbox_id)
    assert ids == [sbx.sandbox_id] * 8
    texts = in_threads(lambda _: Sandbox.connect(sbx.sandbox_id).files.read("threads.txt"))
    assert texts == ["read by eight threads"] * 8


def test_no_network_when_internet_access_is_off_or_all_traffic_denied(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    probe = "curl --connect-timeout 2 --max-time 3 -sI http://1.1.1.1"
    for options in (
        {"allow_internet_access": False},
        {"network": SandboxNetworkOpts(deny_out=[ALL_TRAFFIC])},
    ):
        sandbox = make_sandbox(**options)
        assert sandbox.commands.run("command -v curl").exit_code == 0
        with pytest.raises(CommandExitException) as refused:
            sandbox.commands.run(probe)
        assert refused.value.exit_code != 0


# -- commands --------------------------------------------------------------------------------------


def test_command_output_keeps_special_characters_lines_and_mends_broken_utf8(sbx: Sandbox) -> None:
    assert sbx.commands.run('echo "!@#$%^&*()_+"').stdout == "!@#$%^&*()_+\n"
    assert sbx.commands.run('echo "two\nlines"').stdout == "two\nlines\n"
    cut = sbx.commands.run('printf "%8191s\\xe2" | tr " " a')  # a multi-byte start at a chunk's end
    assert cut.stdout == "a" * 8191 + "\ufffd"
    python = sbx.commands.run(
        "python3 -c 'import os; print(os.environ[\"ONLY_HERE\"])'", envs={"ONLY_HERE": "v"}
    )
    assert python.stdout == "v\n"
    assert sbx.commands.run("echo ${ONLY_HERE:-unset}").stdout == "unset\n"


def test_stdin_without_a_newline_reaches_the_command_at_once(sbx: Sandbox) -> None:
    for text in ("no newline", "!@#$%^&*()_+", "two\nlines"):
        handle = sbx.commands.run("cat", background=True, stdin=True, timeout=0)
        sbx.commands.send_stdin(handle.pid, text)
        seen = ""
        for stdout, _, _ in handle:
            seen += stdout or ""
            if len(seen) >= len(text):
                break
        assert seen == text
        sbx.commands.kill(handle.pid)


def test_a_background_command_times_out_while_iterated(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 10", background=True, timeout=1)
    with pytest.raises(TimeoutException):
        for _ in handle:
            pass


def test_listed_connected_and_killed_processes(sbx: Sandbox) -> None:
    """`kill` returns once the signal is sent, as envd's SendSignal does, not once the process
    is gone: its handle's `wait` is what says it has ended (then its pid is free)."""
    first = sbx.commands.run("sleep 30", background=True, timeout=0)
    second = sbx.commands.run("sleep 30", background=True, timeout=0)
    assert {first.pid, second.pid} <= {p.pid for p in sbx.commands.list()}
    assert sbx.commands.connect(first.pid).pid == first.pid
    for handle in (first, second):
        assert sbx.commands.kill(handle.pid) is True
        with pytest.raises(CommandExitException):
            handle.wait()
        with pytest.raises(CommandExitException):
            sbx.commands.run(f"kill -0 {handle.pid}")
    with pytest.raises(NotFoundException):
        sbx.commands.connect(999999)


# -- files -----------------------------------------------------------------------------------------


def test_list_depth_walks_in_path_order(sbx: Sandbox) -> None:
    root = f"depth_{uuid.uuid4().hex[:8]}"
    for sub in ("b/b2", "b/b1", "a/a2", "a/a1"):
        sbx.files.make_dir(f"{root}/{sub}")
    sbx.files.write(f"{root}/0.txt", "hi")
    shallow = ["0.txt", "a", "b"]
    deep = ["0.txt", "a", "a/a1", "a/a2", "b", "b/b1", "b/b2"]
    for depth, expected in ((None, shallow), (1, shallow), (2, deep), (5, deep)):
        entries = sbx.files.list(root, depth=depth)
        assert [e.path.removeprefix(f"/home/user/{root}/") for e in entries] == expected
        assert [e.name for e in entries] == [p.rsplit("/", 1)[-1] for p in expected]
        assert [e.type for e in entries] == [FileType.FILE] + [FileType.DIR] * (len(expected) - 1)
    sbx.files.remove(root)


def test_entry_details_of_files_and_directories(sbx: Sandbox) -> None:
    sbx.files.write("details/four.txt", "four")
    sbx.files.make_dir("details/inner")
    home = sbx.commands.run("pwd").stdout.strip()
    file, folder = sbx.files.get_info("details/four.txt"), sbx.files.get_info("details/inner")
    assert (file.name, file.type, file.path, file.size) == (
        "four.txt",
        FileType.FILE,
        f"{home}/details/four.txt",
        4,
    )
    assert (folder.name, folder.type, folder.path) == ("inner", FileType.DIR, f"{home}/details/inner")
    assert folder.size > 0 and (folder.mode, folder.permissions) == (0o755, "drwxr-xr-x")
    listed = {e.name: e for e in sbx.files.list("details")}
    for entry in (file, folder, *listed.values()):
        assert (entry.owner, entry.group) == ("user", "user") and entry.modified_time is not None
    assert (listed["four.txt"].mode, listed["inner"].mode) == (0o644, 0o755)
    for missing in ("details/none.txt", "details/no_dir"):
        with pytest.raises(NotFoundException):
            sbx.files.get_info(missing)
    sbx.files.remove("details")


def test_writes_reads_and_moves_at_the_edges(sbx: Sandbox) -> None:
    assert sbx.files.write_files([]) == []
    assert sbx.files.write("edges/w.txt", "first").path == "/home/user/edges/w.txt"
    sbx.files.write("edges/w.txt", "second")
    assert sbx.files.read("edges/w.txt") == "second"
    sbx.files.write("edges/from_io.bin", io.BytesIO(b"bytes read back as text"))
    assert sbx.files.read("edges/from_io.bin") == "bytes read back as text"
    sbx.commands.run("touch edges/empty")
    assert sbx.files.read("edges/empty") == ""
    assert sbx.files.make_dir("edges/one/two/three") is True and sbx.files.exists("edges/one/two")
    with pytest.raises(NotFoundException):
        sbx.files.rename("edges/none.txt", "edges/other.txt")
    sbx.files.remove("edges/none.txt")  # a missing path is not an error
    url = sbx.download_url("edges/w.txt", "user")  # signed, no expiry
    assert httpx.get(url).text == "second"
    sbx.files.remove("edges")


def test_watch_reports_rewrites_and_nested_changes(sbx: Sandbox) -> None:
    sbx.files.write("watch_x/seen.txt", "before")
    flat = sbx.files.watch_dir("watch_x")
    sbx.files.write("watch_x/seen.txt", "after!")
    first_event = flat.get_new_events()[0]
    assert (first_event.name, first_event.type) == ("seen.txt", FilesystemEventType.WRITE)
    flat.stop()
    deep = sbx.files.watch_dir("watch_x", recursive=True)
    sbx.files.make_dir("watch_x/nested")
    sbx.files.write("watch_x/nested/n.txt", "content")
    events = {(e.name, e.type) for e in deep.get_new_events()}
    assert ("nested", FilesystemEventType.CREATE) in events
    assert ("nested/n.txt", FilesystemEventType.WRITE) in events
    deep.stop()
    with pytest.raises(SandboxException):
        sbx.files.watch_dir("watch_x/seen.txt")  # a file, not a directory
    sbx.files.watch_dir("/home/user/").stop()
    sbx.files.remove("watch_x")


# -- terminals -------------------------------------------------------------------------------------


def test_terminal_starts_in_the_asked_directory_with_its_envs(sbx: Sandbox) -> None:
    terminal = sbx.pty.create(PtySize(rows=24, cols=80), envs={"SHOWN": "123"}, cwd="/")
    sbx.pty.send_stdin(terminal.pid, b"echo $SHOWN; pwd; tput cols\nexit\n")
    output: list[bytes] = []
    assert terminal.wait(on_pty=output.append).exit_code == 0
    assert "123\r\n/\r\n80\r\n" in b"".join(output).decode()
    killed = sbx.pty.create(PtySize(rows=24, cols=80))
    assert sbx.pty.kill(killed.pid) is True

    def gone() -> bool:  # a kill is a signal sent, as on E2B: the process may take a moment to end
        try:
            sbx.commands.run(f"kill -0 {killed.pid}")
        except CommandExitException:
            return True
        return False

    wait_until(gone, 5, "the killed terminal's process is still there")
