"""Stateful code execution through the REST API and the SDK: real server, real sandboxes, real kernels.

One sandbox is shared by the module (kernels take ~0.5 s to start); tests that wreck a kernel use
contexts of their own.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from agentcell.client import (
    InvalidArgumentError,
    NotFoundError,
    QuotaExceededError,
    Sandbox,
    UnavailableError,
)
from tests.conftest import AUTH, ServerFactory, ServerProcess

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sbx(shared_server: ServerProcess) -> Iterator[Sandbox]:
    with Sandbox.create(api_url=shared_server.url, env={"FROM_SANDBOX": "yes"}, timeout_s=600) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def raw(shared_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, base_url=shared_server.url, timeout=60) as client:
        yield client


def test_state_persists_across_calls(sbx: Sandbox) -> None:
    """A variable set in one call is there in the next; the last expression is the main result."""
    sbx.run_code("x = 41")
    first = sbx.run_code("x + 1")
    assert first.text == "42"
    assert [r.is_main_result for r in first.results] == [True]
    second = sbx.run_code("x += 1; print('x is', x); x")
    assert (second.text, second.logs.stdout, second.error) == ("42", ["x is 42\n"], None)
    assert second.execution_count == (first.execution_count or 0) + 1
    assert second.status == "ok" and second.duration_ms > 0


def test_matplotlib_figure_arrives_as_png(sbx: Sandbox) -> None:
    """plt.show() in the Python kernel yields a display result with a base64 image/png."""
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [2, 1, 3])\nplt.show()"
    execution = sbx.run_code(code, timeout_s=60)
    pngs = [r.png for r in execution.results if r.png]
    assert execution.error is None and len(pngs) == 1, execution
    assert base64.b64decode(pngs[0]).startswith(PNG_MAGIC)
    assert not execution.results[0].is_main_result


def test_rich_results_keep_every_mime_type(sbx: Sandbox) -> None:
    """A DataFrame brings text/html; display() of JSON and Markdown keep their MIME types."""
    code = (
        "import pandas as pd\n"
        "from IPython.display import JSON, Markdown, display\n"
        "display(Markdown('**hi**'))\n"
        "display(JSON({'a': [1, 2]}))\n"
        "pd.DataFrame({'a': [1, 2, 3]})"
    )
    execution = sbx.run_code(code, timeout_s=60)
    assert execution.error is None, execution.error
    markdown, as_json, frame = execution.results
    assert markdown.markdown == "**hi**"
    assert as_json.json == {"a": [1, 2]}
    assert frame.is_main_result and frame.html and "<table" in frame.html
    assert "text/plain" in frame.formats()
    assert sbx.run_code("df = pd.DataFrame({'a': [1, 2, 3]}); df.a.sum()").text == "6"


def test_exception_is_a_typed_error_and_state_survives(sbx: Sandbox) -> None:
    sbx.run_code("kept = 'still here'")
    errors: list[object] = []
    execution = sbx.run_code("def f():\n    return 1 / 0\nf()", on_error=errors.append)
    assert execution.error is not None and execution.status == "error"
    assert (execution.error.name, execution.error.value) == ("ZeroDivisionError", "division by zero")
    assert "return 1 / 0" in execution.error.traceback and "\x1b[" not in execution.error.traceback
    assert errors == [execution.error]
    assert sbx.run_code("kept").text == "'still here'"


def test_text_that_is_not_valid_unicode_arrives_replaced(sbx: Sandbox) -> None:
    """A lone surrogate in printed text, an error or a result cannot travel as JSON: each comes
    as U+FFFD instead of breaking the stream, and the context goes on."""
    printed = sbx.run_code('print("a\\ud800b")')
    assert "".join(printed.logs.stdout) == "a\ufffdb\n" and printed.error is None
    failed = sbx.run_code('raise ValueError("bad \\udc80")')
    assert failed.error is not None and failed.error.value == "bad \ufffd"
    odd = sbx.run_code('class Odd:\n    def __repr__(self):\n        return "x\\ud800"\nOdd()')
    assert odd.text == "x\ufffd"
    assert sbx.run_code("1 + 1").text == "2"


def test_output_streams_as_it_comes(sbx: Sandbox) -> None:
    """stdout reaches on_stdout while the code still runs; stderr goes to its own callback."""
    seen: list[tuple[str, float]] = []
    started = time.monotonic()
    code = "import sys, time\nprint('first', flush=True)\ntime.sleep(0.6)\nprint('oops', file=sys.stderr)"
    execution = sbx.run_code(
        code,
        on_stdout=lambda text: seen.append((text, time.monotonic() - started)),
        on_stderr=lambda text: seen.append((text, time.monotonic() - started)),
    )
    assert [text for text, _ in seen] == ["first\n", "oops\n"]
    assert seen[0][1] < seen[1][1] - 0.3, seen
    assert execution.logs.stderr == ["oops\n"]


def test_interrupt_stops_an_endless_loop_and_keeps_state(sbx: Sandbox) -> None:
    context = sbx.create_code_context()
    sbx.run_code("n = 7", context=context)
    box: dict[str, object] = {}
    worker = threading.Thread(target=lambda: box.update(r=sbx.run_code("while True: pass", context=context)))
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = {c.id: c.state for c in sbx.list_code_contexts()}
            if states[context.id] == "busy":
                break
            time.sleep(0.05)
        time.sleep(0.2)
        sbx.interrupt_code_context(context)
    finally:
        worker.join(timeout=20)
    interrupted = box["r"]
    assert getattr(interrupted, "error").name == "KeyboardInterrupt"  # noqa: B009
    assert sbx.run_code("n * 6", context=context).text == "42"


def test_timeout_ends_with_a_timeout_error_and_a_usable_context(sbx: Sandbox) -> None:
    sbx.run_code("before = 1")
    started = time.monotonic()
    execution = sbx.run_code("import time\nwhile True: time.sleep(0.01)", timeout_s=1)
    assert time.monotonic() - started < 5
    assert execution.timed_out and execution.status == "timeout" and not execution.restarted
    assert execution.error is not None and execution.error.name == "TimeoutError"
    assert sbx.run_code("before + 1").text == "2"


def test_javascript_context_holds_state(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context(language="javascript")
    assert ctx.language == "javascript" and ctx.state == "new"
    assert sbx.run_code("const x = 40; x + 2", context=ctx).text == "42"
    logged = sbx.run_code("console.log('hello', {a: x}); x + 1", context=ctx)
    assert (logged.logs.stdout, logged.text) == (["hello { a: 40 }\n"], "41")
    failed = sbx.run_code("undefinedThing.foo", context=ctx)
    assert failed.error is not None and failed.error.name == "ReferenceError"
    assert sbx.run_code("await_free = x * 2", context=ctx).text == "80"
    assert sbx.run_code("Promise.resolve(x + 3)", context=ctx).text == "43"
    looping = sbx.run_code("while (true) {}", context=ctx, timeout_s=1)
    assert looping.timed_out and not looping.restarted
    assert sbx.run_code("x", language="javascript").text is None  # the default JS context is another


def test_bash_context_holds_state(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context("bash")
    assert sbx.run_code('a=5; export B=6; cd /tmp; greet() { echo "hi $1"; }', context=ctx).error is None
    again = sbx.run_code('echo "$a $B $(pwd)"; greet you; echo err >&2', context=ctx)
    assert ("".join(again.logs.stdout), "".join(again.logs.stderr)) == ("5 6 /tmp\nhi you\n", "err\n")
    failed = sbx.run_code("false", context=ctx)
    assert failed.error is not None and (failed.error.name, failed.error.value) == ("ExitCode", "1")
    slept = sbx.run_code("sleep 30", context=ctx, timeout_s=1)
    assert slept.timed_out and not slept.restarted
    assert sbx.run_code("echo $a", context=ctx).logs.stdout == ["5\n"]


def test_env_per_context_and_per_call_is_data_not_code(sbx: Sandbox) -> None:
    """Env values reach the kernel as values: quotes and code-like text stay literal, and a
    per-call variable is gone after its call."""
    tricky = '\'); import os; os._exit(3) #\n"$(echo pwned)"'
    ctx = sbx.create_code_context(env={"CTX_VAR": "ctx"})
    code = "import os\n(os.environ['CTX_VAR'], os.environ['FROM_SANDBOX'], os.environ.get('CALL_VAR'))"
    with_call = sbx.run_code(code, context=ctx, env={"CALL_VAR": tricky})
    assert with_call.text == repr(("ctx", "yes", tricky))
    assert sbx.run_code(code, context=ctx).text == repr(("ctx", "yes", None))
    bash = sbx.create_code_context("bash", env={"CTX_VAR": "b"})
    echoed = sbx.run_code('printf "%s|%s" "$CTX_VAR" "$CALL_VAR"', context=bash, env={"CALL_VAR": tricky})
    assert "".join(echoed.logs.stdout) == f"b|{tricky}"
    assert sbx.run_code('echo "[${CALL_VAR-unset}]"', context=bash).logs.stdout == ["[unset]\n"]
    js = sbx.create_code_context("javascript")
    logged = sbx.run_code("console.log(process.env.CALL_VAR)", context=js, env={"CALL_VAR": tricky})
    assert "".join(logged.logs.stdout) == tricky + "\n"


def test_cwd_per_context(sbx: Sandbox) -> None:
    sbx.files.make_dir("/home/user/project")
    ctx = sbx.create_code_context(cwd="/home/user/project")
    assert sbx.run_code("import os; os.getcwd()", context=ctx).text == "'/home/user/project'"
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        sbx.create_code_context(cwd="/no/such/dir")


def test_list_restart_and_remove_contexts(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context()
    sbx.run_code("gone = 1", context=ctx)
    child = sbx.run_code("import subprocess; subprocess.Popen(['sleep', '300']).pid", context=ctx).text
    assert child and sbx.commands.run(f"kill -0 {child}").exit_code == 0
    listed = {c.id: c for c in sbx.list_code_contexts()}
    assert listed[ctx.id].state == "idle" and any(c.is_default for c in listed.values())
    restarted = sbx.restart_code_context(ctx)
    assert (restarted.restarts, restarted.state) == (1, "idle")
    assert sbx.commands.run(f"kill -0 {child}").exit_code != 0, "the old kernel's child survived"
    assert sbx.run_code("gone", context=ctx).error is not None
    sbx.remove_code_context(ctx)
    assert ctx.id not in {c.id for c in sbx.list_code_contexts()}
    with pytest.raises(NotFoundError):
        sbx.run_code("1", context=ctx)


def test_a_kernel_that_exits_says_how(sbx: Sandbox) -> None:
    """The KernelDied error names the exit code (or the signal) the kernel ended with, not only
    the last line of its stderr (which is often an unrelated start-up warning)."""
    ctx = sbx.create_code_context()
    try:
        exited = sbx.run_code("import os; os._exit(3)", context=ctx)
        assert exited.status == "kernel_died" and exited.error is not None
        assert "exit code 3" in exited.error.value, exited.error
        killed = sbx.run_code("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", context=ctx)
        assert killed.status == "kernel_died" and killed.error is not None
        assert "killed by SIGKILL" in killed.error.value, killed.error
    finally:
        sbx.remove_code_context(ctx)
    shell = sbx.create_code_context(language="bash")
    try:
        exited = sbx.run_code("echo hi; exit 7", context=shell)
        assert exited.status == "kernel_died" and exited.error is not None
        assert "exit code 7" in exited.error.value, exited.error
    finally:
        sbx.remove_code_context(shell)


def test_deleting_a_context_ends_its_runs_saying_it_was_deleted(sbx: Sandbox) -> None:
    """A run in flight on a context being deleted, and one queued behind it, end with
    `kernel_died` and an error that says the context was deleted (not that the next run starts a
    new kernel: the context is gone); neither starts a kernel again."""
    ctx = sbx.create_code_context()
    sbx.run_code("1", context=ctx)
    found: list[object] = []
    workers = [
        threading.Thread(
            target=lambda: found.append(sbx.run_code("import time; time.sleep(60)", context=ctx))
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + 10
        while {c.id: c.state for c in sbx.list_code_contexts()}[ctx.id] != "busy":
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        time.sleep(0.2)
        sbx.remove_code_context(ctx)
    finally:
        for worker in workers:
            worker.join(timeout=30)
    assert len(found) == 2
    for execution in found:
        error = getattr(execution, "error")  # noqa: B009
        assert getattr(execution, "status") == "kernel_died", error  # noqa: B009
        assert error.name == "KernelDied" and f"code context {ctx.id} was deleted" in error.value, error
        assert "next run" not in error.value
    assert ctx.id not in {c.id for c in sbx.list_code_contexts()}


def test_bad_input_gets_the_error_envelope(sbx: Sandbox, raw: httpx.Client) -> None:
    path = f"/v1/sandboxes/{sbx.id}/code"
    cases = [
        ({"code": "1", "language": "ruby"}, 400, "language must be one of python, javascript, bash"),
        ({"code": 12}, 400, "code"),
        ({"code": "1", "timeout": 3}, 400, "timeout"),
        ({"code": "x" * ((1 << 20) + 1)}, 400, "at most 1048576 characters"),
        ({"code": "1", "context_id": "ctx_ffffffffffff"}, 404, "no code context"),
        ({"code": "1", "context_id": "../etc"}, 400, "context_id"),
    ]
    for body, status, words in cases:
        answer = raw.post(path, json=body)
        envelope = answer.json()
        assert answer.status_code == status and words in envelope["message"], (body, envelope)
        assert envelope["request_id"]
    bad_json = raw.post(path, content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["code"] == "invalid_argument"
    gone = raw.post("/v1/sandboxes/sbx_0000000000000000/code", json={"code": "1"})
    assert gone.status_code == 404 and gone.json()["code"] == "not_found"
    bad_ctx = raw.post(f"{path}/contexts", json={"language": "cobol"})
    assert bad_ctx.status_code == 400 and "language" in bad_ctx.json()["message"]


def test_nul_is_refused_before_it_reaches_a_kernel(sbx: Sandbox, raw: httpx.Client) -> None:
    """A NUL in code, an env value or a cwd is a 400 naming the field, answered at once: no kernel
    hangs on it (nor cuts the value there), and the context keeps its state."""
    path = f"/v1/sandboxes/{sbx.id}/code"
    assert raw.post(path, json={"code": "nul_kept = 5"}).status_code == 200
    cases = [
        (path, {"code": "\u0000", "timeout_s": 5}, "code: may not contain a NUL"),
        (path, {"code": "1", "env": {"A": "a\u0000b"}}, "env.A: may not contain a NUL"),
        (f"{path}/contexts", {"language": "bash", "env": {"B": "\u0000"}}, "env.B: may not contain a NUL"),
        (f"{path}/contexts", {"language": "javascript", "cwd": "/tmp\u0000x"}, "cwd: may not contain a NUL"),
    ]
    started = time.monotonic()
    for url, body, words in cases:
        answer = raw.post(url, json=body)
        envelope = answer.json()
        assert (answer.status_code, envelope["code"]) == (400, "invalid_argument"), (body, envelope)
        assert words in envelope["message"], (body, envelope)
    assert time.monotonic() - started < 5
    with pytest.raises(InvalidArgumentError, match=r"env\.C: may not contain a NUL"):
        sbx.run_code("1", env={"C": "\x00"})
    after = sbx.run_code("nul_kept")
    assert (after.text, after.restarted) == ("5", False)
    assert all(c.restarts == 0 for c in sbx.list_code_contexts() if c.is_default)


def test_prestarted_kernel_answers_the_first_run_quickly(shared_server: ServerProcess) -> None:
    """`code_kernel=True` returns the sandbox with its default Python kernel already running."""
    with Sandbox.create(api_url=shared_server.url, code_kernel=True) as sandbox:
        (default,) = sandbox.list_code_contexts()
        # idle before any run: the kernel is already up, so the first run does not wait for one
        assert (default.language, default.state, default.is_default) == ("python", "idle", True)
        assert sandbox.run_code("6 * 7").text == "42"
        assert [c.restarts for c in sandbox.list_code_contexts()] == [0]


def test_limits_server_truncates_output_and_restarts_hung_kernels(
    server_factory: ServerFactory,
) -> None:
    """A dedicated server with a 64 KiB output cap, a short interrupt grace and two contexts per
    sandbox: huge output keeps its first 64 KiB, then a marker (a result too big for the cap is
    dropped whole), a kernel that ignores SIGINT is replaced after a
    timeout, and a third context is refused."""
    env = {
        "AGENTCELL_CODE_MAX_OUTPUT_BYTES": "65536",
        "AGENTCELL_CODE_INTERRUPT_GRACE_S": "0.5",
        "AGENTCELL_CODE_MAX_CONTEXTS": "2",
    }
    server = server_factory(env=env)
    with Sandbox.create(api_url=server.url) as sandbox:
        huge = sandbox.run_code("for _ in range(64):\n    print('y' * 65536)", timeout_s=60)
        printed = ("y" * 65536 + "\n") * 64
        marker = "\n[agentcell: output truncated after 65536 bytes; the rest is dropped]\n"
        assert "".join(huge.logs.stdout) == printed[:65536] + marker  # the head kept, then the marker
        assert huge.truncated_bytes == len(printed) - 65536 and huge.status == "ok"
        image = sandbox.run_code("display({'image/png': 'A' * 70000, 'text/plain': 'big'}, raw=True)")
        assert (image.results, image.logs.stdout, image.truncated_bytes) == ([], [marker], 70003)
        assert sandbox.run_code("'small again'").text == "'small again'"

        sandbox.run_code("lost = 1")
        hung = sandbox.run_code(
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass", timeout_s=0.5
        )
        assert hung.timed_out and hung.restarted and hung.error is not None
        (context,) = sandbox.list_code_contexts()
        assert context.restarts == 1 and "ignored the interrupt" in (context.last_restart_reason or "")
        again = sandbox.run_code("lost")
        assert again.error is not None and again.error.name == "NameError"

        sandbox.create_code_context("bash")
        with pytest.raises(QuotaExceededError, match="at most 2 code contexts"):
            sandbox.create_code_context("javascript")


def test_cli_run_code(sbx: Sandbox, shared_server: ServerProcess) -> None:
    """`agentcell run-code` keeps state between runs, prints the value, and exits 1 on an error."""
    agentcell = str(Path(sys.executable).parent / "agentcell")

    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [agentcell, "--url", shared_server.url, "run-code", sbx.id, *args]
        return subprocess.run(argv, input=stdin, text=True, capture_output=True, timeout=90)

    assert cli("cli_value = 21").returncode == 0
    doubled = cli("print('doubling'); cli_value * 2")
    assert (doubled.returncode, doubled.stdout) == (0, "doubling\n42\n")
    from_stdin = cli("--language", "bash", stdin="echo from-stdin")
    assert (from_stdin.returncode, from_stdin.stdout) == (0, "from-stdin\n")
    failed = cli("1/0")
    assert failed.returncode == 1 and "ZeroDivisionError" in failed.stderr
    slow = cli("--timeout", "0.5", "import time; time.sleep(5)")
    assert slow.returncode == 124 and "TimeoutError" in slow.stderr


def test_a_sandbox_killed_mid_execution_ends_the_stream(shared_server: ServerProcess) -> None:
    """Kernels die with their sandbox; a run in flight ends with `kernel_died`, not a hang."""
    with Sandbox.create(api_url=shared_server.url, code_kernel=True) as sandbox:
        box: dict[str, object] = {}
        worker = threading.Thread(
            target=lambda: box.update(r=sandbox.run_code("import time; time.sleep(60)", timeout_s=120))
        )
        worker.start()
        time.sleep(1.0)
        started = time.monotonic()
        assert sandbox.kill()
        worker.join(timeout=30)
        execution = box["r"]
        assert getattr(execution, "status") == "kernel_died"  # noqa: B009
        assert time.monotonic() - started < 10


def test_a_sandbox_killed_while_its_kernel_starts_is_no_503(shared_server: ServerProcess) -> None:
    """A kernel start that the sandbox's kill cut short answers that the sandbox ended (404/409),
    not 503 `unavailable`, which tells clients to retry something that can never succeed."""
    with httpx.Client(base_url=shared_server.url, headers=AUTH, timeout=60) as client:
        for _ in range(3):
            sandbox_id = client.post("/v1/sandboxes", json={"timeout_s": 60}).json()["id"]
            with ThreadPoolExecutor(1) as pool:
                run = pool.submit(client.post, f"/v1/sandboxes/{sandbox_id}/code", json={"code": "1"})
                time.sleep(0.05)  # the kernel takes longer than this to start
                client.delete(f"/v1/sandboxes/{sandbox_id}")
                reply = run.result(timeout=30)
            assert reply.status_code in (200, 404, 409), reply.text
            if reply.status_code != 200:
                assert reply.json()["code"] in ("not_found", "not_running")


def test_concurrent_runs_share_one_default_context_in_turn(shared_server: ServerProcess) -> None:
    """Two first runs at once make one default context; its executions take turns."""
    with Sandbox.create(api_url=shared_server.url) as sandbox:
        found: list[object] = []
        code = "import time; time.sleep(0.5); 'done'"
        workers = [threading.Thread(target=lambda: found.append(sandbox.run_code(code))) for _ in range(2)]
        started = time.monotonic()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert time.monotonic() - started >= 1.0
        assert [getattr(e, "text") for e in found] == ["'done'", "'done'"]  # noqa: B009
        assert len(sandbox.list_code_contexts()) == 1


def test_a_kernel_that_cannot_start_is_a_clear_error(sbx: Sandbox) -> None:
    """503 `unavailable` with the kernel's own last words, and nothing left running."""
    sbx.files.write("/home/user/broken/ipykernel/__init__.py", "raise ImportError('no kernel here')\n")
    ctx = sbx.create_code_context(env={"PYTHONPATH": "/home/user/broken"})
    with pytest.raises(UnavailableError, match="no kernel here"):
        sbx.run_code("1", context=ctx)
    (info,) = [c for c in sbx.list_code_contexts() if c.id == ctx.id]
    assert info.state in ("new", "dead")
