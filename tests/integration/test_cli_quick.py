"""`agentcell sandbox create` and `agentcell exec` answered without click, httpx or pydantic
(agentcell.cli.quick), as the console script runs them against a real server: what they print,
create and run, that `exec` ends exactly as the full command ends it, and that every case left to
the full command ends as the full command ends it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest

from agentcell.client.command_wire import stream_without_end
from tests.conftest import free_port

HEAVY = {"click", "httpx", "pydantic"}

RUN_ENTRY = """
import json, sys
from agentcell.cli.entry import main
sys.argv[0] = "agentcell"
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
sys.stdout.flush()
print(json.dumps([code, sorted(sys.modules)]), file=sys.stderr)
"""
"""The console script's code, reporting its exit status and the modules it imported last on stderr."""

FULL_ENTRY = RUN_ENTRY.replace("agentcell.cli.entry", "agentcell.cli.main")
"""The same for the full command alone (click and the SDK), which the quick path must match."""


class Ran(NamedTuple):
    code: int
    out: bytes
    err: bytes
    modules: set[str]


def run_cli(entry: str, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Ran:
    """`agentcell ARGS` run by `entry`, with `stdin` piped to it (None: /dev/null)."""
    done = subprocess.run(
        [sys.executable, "-c", entry, *args],
        capture_output=True,
        timeout=90,
        env={**without_proxies(os.environ), **(env or {})},
        input=stdin if stdin is not None else b"",
    )
    said, _, report = done.stderr.rstrip(b"\n").rpartition(b"\n")
    code, modules = json.loads(report)
    return Ran(code, done.stdout, said + b"\n" if said else b"", set(modules))


def agentcell(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str, set[str]]:
    """(exit status, stdout, stderr without the report, modules imported) of `agentcell ARGS`."""
    ran = run_cli(RUN_ENTRY, *args, env=env)
    return ran.code, ran.out.decode(), ran.err.decode(), ran.modules


def without_proxies(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment less any proxy settings, which send a create to the SDK (a test that wants
    one gives it)."""
    return {k: v for k, v in environ.items() if not k.lower().endswith("_proxy")}


@pytest.fixture
def run_tag(api: httpx.Client) -> Iterator[str]:
    tag = uuid.uuid4().hex[:12]
    yield tag
    for sandbox in api.get("/v1/sandboxes", params={"metadata": f"run={tag}"}).json()["sandboxes"]:
        api.delete(f"/v1/sandboxes/{sandbox['id']}")


def test_a_plain_create_prints_the_id_without_click_httpx_or_pydantic(
    api: httpx.Client, server_url: str, run_tag: str
) -> None:
    code, out, err, modules = agentcell(
        "--url", server_url, "sandbox", "create", "--template", "base", "--env=GREETING=hi x",
        "--metadata", f"run={run_tag}", "--metadata", "who=me",
    )  # fmt: skip
    assert (code, err) == (0, "") and out.startswith("sbx_") and out.count("\n") == 1
    assert not HEAVY & modules
    sandbox_id = out.strip()
    info = api.get(f"/v1/sandboxes/{sandbox_id}").json()
    assert info["template"] == "base" and info["metadata"] == {"run": run_tag, "who": "me"}
    ran = api.post(f"/v1/sandboxes/{sandbox_id}/commands", json={"cmd": "echo $GREETING"})
    events = [json.loads(line) for line in ran.text.splitlines()]
    assert [e["data"] for e in events if e["type"] == "stdout"] == ["hi x\n"], ran.text


def test_a_refused_create_says_what_the_full_command_says(server_url: str) -> None:
    """The server's refusal is left to the full command, which asks again and words it."""
    code, out, err, modules = agentcell("--url", server_url, "sandbox", "create", "--template", "nope")
    assert (code, out) == (1, "") and err.startswith("error: template 'nope' not found"), err
    assert {"click", "httpx"} <= modules


def test_no_key_is_the_full_command_s_401(server_url: str, tmp_path: Path) -> None:
    keyless = {"AGENTCELL_API_KEY": "", "AGENTCELL_STATE_DIR": str(tmp_path)}
    code, _, err, _ = agentcell("--url", server_url, "sandbox", "create", env=keyless)
    assert code == 1 and "no API key was sent" in err, err


def test_no_server_is_the_full_command_s_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err, modules = agentcell("--url", url, "sandbox", "create")
    assert code == 1 and err.startswith(f"error: cannot connect to the agentcell server at {url}"), err
    assert "httpx" in modules


def test_a_proxy_in_the_environment_is_left_to_the_sdk(server_url: str, run_tag: str) -> None:
    """httpx sends through an environment's proxy (here bypassed for loopback by NO_PROXY, which
    only httpx reads): such a create is the SDK's."""
    proxy = {"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}
    code, out, err, modules = agentcell(
        "--url", server_url, "sandbox", "create", "--metadata", f"run={run_tag}", env=proxy
    )
    assert (code, err) == (0, "") and out.startswith("sbx_") and "httpx" in modules


@contextlib.contextmanager
def answering_once(answer: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """A server (its URL) that reads one request, sends `answer` (may be nothing) and closes, then
    waits a second for a second connection; yields the requests it got, complete once left."""
    requests: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            listener.settimeout(30)
            with listener.accept()[0] as conn:
                requests.append(conn.recv(65536))
                conn.sendall(answer)
            listener.settimeout(1)
            try:
                listener.accept()[0].close()
                requests.append(b"a second connection")
            except TimeoutError:
                pass

        server = threading.Thread(target=serve)
        server.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}", requests
        finally:
            server.join()


def test_a_connection_lost_after_the_request_is_an_error_not_a_second_create() -> None:
    """The sandbox may exist: nothing is sent again."""
    with answering_once(b"") as (url, requests):
        code, out, err, _ = agentcell("--url", url, "sandbox", "create", env={"AGENTCELL_API_KEY": "k"})
    assert len(requests) == 1 and requests[0].startswith(b"POST /v1/sandboxes HTTP/1.0\r\n")
    assert (code, out) == (1, "")
    lost = "the server closed the connection without answering"
    assert err == f"error: the connection to the agentcell server at {url} failed: {lost}\n"


@pytest.mark.parametrize(
    ("args", "stdin", "code"),
    [
        (["--", "echo", "hi  there"], None, 0),  # several arguments: an argv
        (["--", "echo $((6*7)); echo to-err >&2"], None, 0),  # one: a shell line
        (["--env", "A=1 2", "--env=B=", "--cwd", "/tmp", "--", 'echo "$A|$B"; pwd'], None, 0),
        (["--", "cat; echo; printf 'x\\377y\\n'"], b"piped\nstdin", 0),  # (and bytes that are not UTF-8)
        (["-n", "--", "cat"], b"not sent", 0),
        (["--", "cat"], b"\xff\xfe", 1),  # stdin that is not text: the full command's error
        (["--", "echo out; echo err >&2; exit 3"], None, 3),
        (["--", "echo before; kill -TERM $$"], None, 128 + signal.SIGTERM),
        (["--timeout", "1", "--", "echo started; sleep 30"], None, 128 + signal.SIGKILL),
        (["--timeout", "0", "--", "echo no limit"], None, 0),
    ],
)
def test_a_plain_exec_ends_as_the_full_command_ends(
    server_url: str, rest_sandbox: str, args: list[str], stdin: bytes | None, code: int
) -> None:
    """Same stdout and stderr, byte for byte, and the same exit status, without click, httpx or
    pydantic."""
    line = ["--url", server_url, "exec", rest_sandbox, *args]
    quick, full = run_cli(RUN_ENTRY, *line, stdin=stdin), run_cli(FULL_ENTRY, *line, stdin=stdin)
    assert not HEAVY & quick.modules and "httpx" in full.modules
    assert quick[:3] == full[:3]
    assert quick.code == code, quick


def test_what_a_plain_exec_prints(server_url: str, rest_sandbox: str) -> None:
    """What the comparisons above compare, for the lines that say the most."""
    ran = run_cli(
        RUN_ENTRY,
        "--url",
        server_url,
        "exec",
        rest_sandbox,
        "--",
        "cat; printf 'x\\377y'; exit 3",
        stdin=b"in",
    )
    assert ran[:3] == (3, "inx\ufffdy".encode(), b"")  # (the server's stream is UTF-8 text)
    slow = run_cli(RUN_ENTRY, "--url", server_url, "exec", "--timeout", "1", rest_sandbox, "--", "sleep 30")
    assert slow[:3] == (137, b"", b"agentcell: timed out after 1 s\n")
    not_text = run_cli(RUN_ENTRY, "--url", server_url, "exec", rest_sandbox, "--", "cat", stdin=b"\xff")
    assert not_text.err.startswith(b"error: stdin is not UTF-8 text"), not_text


@pytest.mark.parametrize(
    ("sandbox", "said"),
    [("sbx_nope", b"error: sandbox 'sbx_nope' not found"), ("no/such id", b"error: no route GET")],
)
def test_an_exec_the_server_refuses_is_the_full_command_s(server_url: str, sandbox: str, said: bytes) -> None:
    """The refusal (nothing ran) is left to the full command, which asks again and words it."""
    line = ["--url", server_url, "exec", sandbox, "--", "true"]
    quick, full = run_cli(RUN_ENTRY, *line), run_cli(FULL_ENTRY, *line)
    assert quick[:3] == full[:3] and quick.code == 1 and quick.err.startswith(said), quick
    assert "httpx" in quick.modules


def test_an_exec_with_no_server_is_the_full_command_s() -> None:
    line = ["--url", f"http://127.0.0.1:{free_port()}", "exec", "sbx_1", "--", "true"]
    quick, full = run_cli(RUN_ENTRY, *line, stdin=b"data"), run_cli(FULL_ENTRY, *line, stdin=b"data")
    assert quick[:3] == full[:3] and quick.code == 1 and b"cannot connect" in quick.err, quick
    assert "httpx" in quick.modules


def test_a_refused_exec_hands_the_piped_stdin_it_read_to_the_full_command(
    server_url: str, rest_sandbox: str
) -> None:
    """The quick path read stdin before the server refused; the full command, which sends the
    request again, sends the same stdin (here the refusal is a front that turns down the first
    request only)."""
    with refusing_the_first_request(server_url) as front:
        ran = run_cli(RUN_ENTRY, "--url", front, "exec", rest_sandbox, "--", "cat", stdin=b"read once")
    assert ran[:3] == (0, b"read once", b"") and "httpx" in ran.modules


def exec_process(entry: str, server_url: str, sandbox_id: str, command: str) -> subprocess.Popen[bytes]:
    """`agentcell exec` through `entry` as a running process, its stdout and stderr piped."""
    argv = [sys.executable, "-c", entry, "--url", server_url, "exec", sandbox_id, "--", command]
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=without_proxies(os.environ),
    )


def test_a_plain_exec_streams_live(server_url: str, rest_sandbox: str, api: httpx.Client) -> None:
    """The first line reaches our stdout while the command cannot have ended: it waits for a file
    that is made only once that line was read."""
    waits = "echo first; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second >&2; echo third"
    with exec_process(RUN_ENTRY, server_url, rest_sandbox, waits) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"first\n"
        made = api.post(f"/v1/sandboxes/{rest_sandbox}/commands", json={"cmd": "touch /tmp/go"})
        assert made.status_code == 200, made.text
        assert proc.stdout.read() == b"third\n"
        said, _, report = proc.stderr.read().rstrip(b"\n").rpartition(b"\n")
    code, modules = json.loads(report)
    assert (proc.returncode, code, said) == (0, 0, b"second") and not HEAVY & set(modules)


@pytest.mark.parametrize("entry", [RUN_ENTRY, FULL_ENTRY], ids=["quick", "full"])
def test_ctrl_c_during_an_exec_exits_130(server_url: str, rest_sandbox: str, entry: str) -> None:
    """As a shell does, and the same through both paths. The CLI runs as from a terminal: with
    Python's own ^C handler, even when these tests run as a background job (whose children start
    with SIGINT ignored, and rightly go on past a ^C)."""
    interactive = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
    with exec_process(interactive + entry, server_url, rest_sandbox, "echo first; sleep 60") as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"first\n"
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    said, _, report = err.rstrip(b"\n").rpartition(b"\n")
    assert (json.loads(report)[0], rest, said) == (130, b"", b"")


def test_a_proxy_in_the_environment_sends_an_exec_through_the_sdk(server_url: str, rest_sandbox: str) -> None:
    proxy = {"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1"}
    ran = run_cli(RUN_ENTRY, "--url", server_url, "exec", rest_sandbox, "--", "echo via sdk", env=proxy)
    assert ran[:3] == (0, b"via sdk\n", b"") and "httpx" in ran.modules


def test_a_command_stream_cut_short_is_an_error_not_a_second_run() -> None:
    """The command may have run, or still run: the SDK's error, and nothing is sent again."""
    cut_short = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n"
        b'{"type":"start","process_id":"proc_1","pid":2}\n{"type":"stdout","data":"partial"}\n'
    )
    with answering_once(cut_short) as (url, requests):
        ran = run_cli(RUN_ENTRY, "--url", url, "exec", "sbx_1", "--", "true", env={"AGENTCELL_API_KEY": "k"})
    assert len(requests) == 1 and requests[0].startswith(b"POST /v1/sandboxes/sbx_1/commands HTTP/1.0\r\n")
    assert ran[:3] == (1, b"partial", f"error: {stream_without_end()}\n".encode())


@contextlib.contextmanager
def refusing_the_first_request(upstream_url: str) -> Iterator[str]:
    """A front to `upstream_url` (its URL) that answers the first connection's request with a 503
    and relays every later connection to the upstream as it is."""
    upstream = httpx.URL(upstream_url)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        done = threading.Event()

        def relay(source: socket.socket, sink: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        def serve() -> None:
            listener.settimeout(30)
            with listener.accept()[0] as first:
                first.recv(65536)
                envelope = b'{"code":"unavailable","message":"try again","request_id":"req_1"}'
                first.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(envelope)}\r\nconnection: close\r\n\r\n".encode()
                    + envelope
                )
            pipes = []
            listener.settimeout(0.05)  # (to see `done`)
            while not done.is_set():
                try:
                    client = listener.accept()[0]
                except TimeoutError:
                    continue
                server = socket.create_connection((upstream.host, upstream.port or 80))
                for source, sink in ((client, server), (server, client)):
                    pipe = threading.Thread(target=relay, args=(source, sink))
                    pipe.start()
                    pipes.append((pipe, source))
            for pipe, source in pipes:
                pipe.join()
                source.close()

        front = threading.Thread(target=serve)
        front.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}"
        finally:
            done.set()
            front.join()
