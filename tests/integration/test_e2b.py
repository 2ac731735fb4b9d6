"""The official `e2b` and `e2b-code-interpreter` SDKs (pinned in the dev extra), unchanged, against a
real agentcell server: configured by environment variables only, as docs/e2b.md tells users.

Sandboxes are shared per module where tests do not disturb each other (separate paths, contexts).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator

import pytest
from e2b import (
    CommandExitException,
    FilesystemEventType,
    FileType,
    NotFoundException,
    SandboxException,
    SandboxNotFoundException,
    SandboxQuery,
    TimeoutException,
)
from e2b import Sandbox as BaseSandbox
from e2b_code_interpreter import Sandbox

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sbx(e2b_env: str) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(timeout=600, metadata={"suite": "e2b-sync"}, envs={"FROM_CREATE": "yes"})
    yield sandbox
    sandbox.kill()


# -- lifecycle -------------------------------------------------------------------------------------


def test_create_info_list_and_kill(e2b_env: str) -> None:
    """Create with template, timeout and metadata; get_info and list (metadata filter, paging) see
    it; kill ends it, and a second kill says it was not there."""
    tag = f"t{time.monotonic_ns()}"
    sandboxes = [
        BaseSandbox.create("base", timeout=120, metadata={"case": tag}, allow_internet_access=i > 0)
        for i in range(3)
    ]
    try:
        info = sandboxes[0].get_info()
        assert (info.template_id, info.metadata, info.state.value) == ("base", {"case": tag}, "running")
        assert (info.allow_internet_access, sandboxes[1].get_info().allow_internet_access) == (False, True)
        assert 100 < (info.end_at - info.started_at).total_seconds() <= 121
        paginator = BaseSandbox.list(query=SandboxQuery(metadata={"case": tag}), limit=2)
        first = paginator.next_items()
        assert len(first) == 2 and paginator.has_next
        second = paginator.next_items()
        assert not paginator.has_next
        listed = [s.sandbox_id for s in first + second]
        assert sorted(listed) == sorted(s.sandbox_id for s in sandboxes)
        assert BaseSandbox.list(query=SandboxQuery(metadata={"case": "other"})).next_items() == []
        newest_first = BaseSandbox.list(query=SandboxQuery(metadata={"case": tag}), order="desc").next_items()
        assert [s.sandbox_id for s in newest_first] == [s.sandbox_id for s in reversed(sandboxes)]
        by_template = SandboxQuery(metadata={"case": tag}, template="code-interpreter-v1")
        assert BaseSandbox.list(query=by_template).next_items() == []
    finally:
        assert [s.kill() for s in sandboxes] == [True, True, True]
    assert BaseSandbox.kill(sandboxes[0].sandbox_id) is False
    assert not sandboxes[0].is_running()


def test_connect_and_set_timeout(sbx: Sandbox) -> None:
    """connect(id) reaches the same sandbox; set_timeout moves its end."""
    again = Sandbox.connect(sbx.sandbox_id)
    assert again.commands.run("echo $FROM_CREATE").stdout == "yes\n"
    sbx.set_timeout(900)
    info = sbx.get_info()
    assert (
        890
        < (info.end_at - info.started_at).total_seconds() - (time.time() - info.started_at.timestamp())
        < 910
    )
    sbx.set_timeout(600)
    assert sbx.is_running()


def test_unknown_sandbox_raises_not_found(e2b_env: str) -> None:
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect("sbx_0000000000000000")
    with pytest.raises(SandboxNotFoundException):
        BaseSandbox.get_info("sbx_0000000000000000")


def test_cloud_only_features_say_so(sbx: Sandbox) -> None:
    """E2B's template service answers 501 with the reason (snapshots and fork:
    test_e2b_snapshots.py; pause, resume and metrics: test_e2b_pause.py)."""
    with pytest.raises(SandboxException, match="not available"):
        BaseSandbox.delete_snapshot("some-template")  # a template, not a snapshot


def test_unknown_template_is_an_error(e2b_env: str) -> None:
    with pytest.raises(SandboxException, match="not found"):
        BaseSandbox.create("no-such-template")


# -- commands --------------------------------------------------------------------------------------


def test_command_output_exit_codes_and_env(sbx: Sandbox) -> None:
    result = sbx.commands.run("echo out; echo err >&2; echo $WHO; pwd; whoami", envs={"WHO": "me"})
    assert (result.stdout, result.stderr, result.exit_code) == ("out\nme\n/home/user\nuser\n", "err\n", 0)
    with pytest.raises(CommandExitException) as failed:
        sbx.commands.run("echo partial; exit 3")
    assert (failed.value.exit_code, failed.value.stdout) == (3, "partial\n")
    assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"


def test_command_streaming_callbacks(sbx: Sandbox) -> None:
    seen: list[tuple[str, str]] = []
    sbx.commands.run(
        "for i in 1 2 3; do echo $i; sleep 0.05; done; echo e >&2",
        on_stdout=lambda line: seen.append(("out", line)),
        on_stderr=lambda line: seen.append(("err", line)),
    )
    assert "".join(text for kind, text in seen if kind == "out") == "1\n2\n3\n"
    assert ("err", "e\n") in seen


def test_background_command_list_stdin_and_kill(sbx: Sandbox) -> None:
    """A background command reads what send_stdin sends; list shows it; kill ends it."""
    handle = sbx.commands.run("cat", background=True, stdin=True, timeout=0)
    assert handle.pid in [p.pid for p in sbx.commands.list()]
    sbx.commands.send_stdin(handle.pid, "hello\n")
    sbx.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "hello\n"
    streamed = sbx.commands.run("cat", background=True, stdin=True, timeout=0)
    sbx.commands.stream_input(streamed.pid, ["a\n", b"b\n"])
    sbx.commands.close_stdin(streamed.pid)
    assert streamed.wait().stdout == "a\nb\n"
    sleeper = sbx.commands.run("sleep 30", background=True, timeout=0)
    assert sbx.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException):
        sleeper.wait()
    assert sleeper.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(999999) is False


def test_connect_to_a_running_command_and_iterate(sbx: Sandbox) -> None:
    handle = sbx.commands.run("sleep 0.3; echo done; echo oops >&2", background=True)
    handle.disconnect()
    again = sbx.commands.connect(handle.pid)
    seen = [(out, err) for out, err, _pty in again]
    assert ("done\n", None) in seen and (None, "oops\n") in seen
    assert again.wait().stdout == "done\n"


def test_command_timeout_raises(sbx: Sandbox) -> None:
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 10", timeout=1)


def test_root_user_is_refused(sbx: Sandbox) -> None:
    with pytest.raises(SandboxException, match="root"):
        sbx.commands.run("id", user="root")


# -- files -----------------------------------------------------------------------------------------


def test_files_text_bytes_list_exists_rename_remove(sbx: Sandbox) -> None:
    sbx.files.write("files_case/a.txt", "héllo")
    sbx.files.write("/home/user/files_case/b.bin", b"\x00\x01\xff")
    assert sbx.files.read("files_case/a.txt") == "héllo"
    assert bytes(sbx.files.read("files_case/b.bin", format="bytes")) == b"\x00\x01\xff"
    entries = {e.name: e for e in sbx.files.list("files_case")}
    assert sorted(entries) == ["a.txt", "b.bin"]
    assert entries["b.bin"].type == FileType.FILE and entries["b.bin"].size == 3
    detail = entries["a.txt"]
    assert (detail.path, detail.mode, detail.permissions) == (
        "/home/user/files_case/a.txt",
        0o644,
        "-rw-r--r--",
    )
    assert (detail.owner, detail.group, detail.symlink_target) == ("user", "user", None)
    with pytest.raises(SandboxException, match="depth should be at least 1"):
        sbx.files.list("files_case", depth=-1)
    assert sbx.files.exists("files_case/a.txt") and not sbx.files.exists("files_case/none")
    assert sbx.files.make_dir("files_case/sub/deeper") is True
    assert sbx.files.make_dir("files_case/sub/deeper") is False
    assert [e.path.removeprefix("/home/user/files_case/") for e in sbx.files.list("files_case", depth=3)] == [
        "a.txt",
        "b.bin",
        "sub",
        "sub/deeper",
    ]
    assert sbx.files.get_info("files_case/sub").permissions == "drwxr-xr-x"
    moved = sbx.files.rename("files_case/a.txt", "files_case/sub/c.txt")
    assert moved.path == "/home/user/files_case/sub/c.txt"
    assert sbx.files.get_info("files_case/sub/c.txt").size == len("héllo".encode())
    sbx.files.remove("files_case")
    assert not sbx.files.exists("files_case")
    with pytest.raises(NotFoundException):
        sbx.files.read("files_case/a.txt")


def test_write_several_files_and_stream_a_file_object(sbx: Sandbox) -> None:
    import io

    from e2b.sandbox.filesystem.filesystem import WriteEntry

    written = sbx.files.write_files(
        [WriteEntry(path="multi/one.txt", data="1"), WriteEntry(path="multi/two.txt", data=b"2")]
    )
    assert sorted(w.path for w in written) == ["/home/user/multi/one.txt", "/home/user/multi/two.txt"]
    sbx.files.write("multi/stream.bin", io.BytesIO(b"x" * 300_000))
    sbx.files.write("multi/gz.txt", "zipped", gzip=True)
    assert sbx.commands.run(
        "cat multi/one.txt multi/two.txt; wc -c < multi/stream.bin; cat multi/gz.txt"
    ).stdout == ("12300000\nzipped")


def test_signed_download_and_upload_urls(sbx: Sandbox) -> None:
    """download_url()/upload_url() are signed with the sandbox's access token; as the SDK builds them
    with E2B_SANDBOX_URL they name no sandbox, and the signature finds it."""
    import httpx

    sbx.files.write("signed.txt", "secret")
    url = sbx.download_url("signed.txt", use_signature_expiration=60)
    good = httpx.get(url)
    assert (good.status_code, good.text) == (200, "secret")
    assert httpx.get(url.replace("signature=v1_", "signature=v1_x")).status_code == 401
    upload = sbx.upload_url("uploaded.txt")
    sent = httpx.post(upload, files={"file": ("uploaded.txt", b"via url")})
    assert sent.status_code == 200 and sent.json()[0]["path"] == "/home/user/uploaded.txt"
    assert sbx.files.read("uploaded.txt") == "via url"


def test_watch_dir_sees_create_write_remove(sbx: Sandbox) -> None:
    sbx.files.make_dir("watched")
    handle = sbx.files.watch_dir("watched")
    sbx.files.write("watched/new.txt", "content")
    events = handle.get_new_events()
    assert [(e.name, e.type) for e in events] == [
        ("new.txt", FilesystemEventType.CREATE),
        ("new.txt", FilesystemEventType.WRITE),
    ]
    sbx.files.remove("watched/new.txt")
    assert [(e.name, e.type) for e in handle.get_new_events()] == [("new.txt", FilesystemEventType.REMOVE)]
    handle.stop()
    with pytest.raises(NotFoundException):
        sbx.files.watch_dir("not_there")


def test_watch_dir_sees_what_a_command_does_even_undone_at_once(sbx: Sandbox) -> None:
    sbx.files.make_dir("seen")
    handle = sbx.files.watch_dir("seen")
    sbx.commands.run("cd seen && : > a && chmod 600 a && mv a b && rm b")
    assert [(e.name, e.type) for e in handle.get_new_events()] == [
        ("a", FilesystemEventType.CREATE),
        ("a", FilesystemEventType.CHMOD),
        ("a", FilesystemEventType.RENAME),
        ("b", FilesystemEventType.CREATE),
        ("b", FilesystemEventType.REMOVE),
    ]
    handle.stop()


# -- code interpreter ------------------------------------------------------------------------------


def test_run_code_keeps_state_and_streams(sbx: Sandbox) -> None:
    sbx.run_code("x = 41")
    chunks: list[str] = []
    execution = sbx.run_code("print('x is', x); x + 1", on_stdout=lambda m: chunks.append(m.line))
    assert (execution.text, execution.logs.stdout, chunks) == ("42", ["x is 41\n"], ["x is 41\n"])
    assert execution.execution_count is not None and execution.execution_count >= 2
    failed = sbx.run_code("1 / 0")
    assert failed.error is not None and failed.error.name == "ZeroDivisionError"
    assert sbx.run_code("import os; os.environ['ONLY']", envs={"ONLY": "now"}).text == "'now'"
    assert sbx.run_code("os.environ.get('ONLY'), os.environ['FROM_CREATE']").text == "(None, 'yes')"


def test_run_code_timeout_interrupts_the_execution(sbx: Sandbox) -> None:
    """The SDK's `timeout` ends the request; the server then interrupts the kernel, whose state
    survives, so the next run does not wait behind the abandoned one."""
    context = sbx.create_code_context()
    sbx.run_code("kept = 7", context=context)
    with pytest.raises(TimeoutException):
        sbx.run_code("import time; time.sleep(30)", context=context, timeout=1)
    started = time.monotonic()
    assert sbx.run_code("kept", context=context).text == "7"
    assert time.monotonic() - started < 10
    sbx.remove_code_context(context)


def test_run_code_chart_png_and_dataframe(sbx: Sandbox) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [2, 1, 3])\nplt.show()"
    execution = sbx.run_code(code)
    pngs = [r.png for r in execution.results if r.png]
    assert execution.error is None and len(pngs) == 1
    assert base64.b64decode(pngs[0]).startswith(PNG_MAGIC)
    frame = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2]})")
    assert frame.results[0].html is not None and "<table" in frame.results[0].html


def test_code_contexts_python_and_javascript(sbx: Sandbox) -> None:
    languages = {c.language for c in sbx.list_code_contexts()}
    assert {"python", "javascript"} <= languages
    js = sbx.create_code_context(language="javascript")
    assert sbx.run_code("const y = 20; y + 1", context=js).text == "21"
    py = sbx.create_code_context(cwd="/tmp")
    assert sbx.run_code("import os; os.getcwd()", context=py).text == "'/tmp'"
    sbx.run_code("z = 5", context=py)
    sbx.restart_code_context(py)
    assert sbx.run_code("'z' in dir()", context=py).text == "False"
    sbx.remove_code_context(py)
    assert py.id not in [c.id for c in sbx.list_code_contexts()]
    with pytest.raises(NotFoundException):
        sbx.remove_code_context(py.id)


# -- errors and the killed sandbox -----------------------------------------------------------------


def test_killed_sandbox_raises_not_running(e2b_env: str) -> None:
    from e2b import SandboxNotRunningException

    sandbox = BaseSandbox.create(timeout=60)
    sandbox.kill()
    with pytest.raises(SandboxNotRunningException):
        sandbox.commands.run("echo hi")
    with pytest.raises(SandboxNotRunningException):
        sandbox.files.read("/etc/hostname")
    assert not sandbox.is_running()


def test_sandbox_killed_during_a_command(e2b_env: str) -> None:
    """The command's stream breaks; the SDK probes the sandbox, finds it gone and says so."""
    from e2b import SandboxNotRunningException

    sandbox = BaseSandbox.create(timeout=60)
    handle = sandbox.commands.run("sleep 60", background=True)
    sandbox.kill()
    with pytest.raises(SandboxNotRunningException, match="killed or reached its end of life"):
        handle.wait()


def test_sandbox_killed_during_run_code(e2b_env: str) -> None:
    sandbox = Sandbox.create(timeout=60)
    sandbox.run_code("1")
    timer = threading.Timer(1.0, sandbox.kill)
    timer.start()
    try:
        with pytest.raises(TimeoutException, match="sandbox was killed while the request was in progress"):
            sandbox.run_code("import time; time.sleep(60)")
    finally:
        timer.cancel()


def test_missing_api_key_raises_authentication(e2b_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from e2b import AuthenticationException

    with pytest.raises(AuthenticationException):
        BaseSandbox.list(api_key=" ").next_items()
