"""`agentcell sandbox create` answered without click, httpx or pydantic (agentcell.cli.quick), as
its console script runs it against a real server: what it prints and creates, and that every case
it leaves to the full command ends as the full command ends it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

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
print(json.dumps([code, sorted(sys.modules)]), file=sys.stderr)
"""
"""The console script's code, reporting its exit status and the modules it imported last on stderr."""


def agentcell(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str, set[str]]:
    """(exit status, stdout, stderr without the report, modules imported) of `agentcell ARGS`."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_ENTRY, *args],
        capture_output=True,
        text=True,
        timeout=90,
        env={**without_proxies(os.environ), **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    *said, report = done.stderr.splitlines()
    code, modules = json.loads(report)
    return code, done.stdout, "".join(line + "\n" for line in said), set(modules)


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


def test_a_connection_lost_after_the_request_is_an_error_not_a_second_create() -> None:
    """The sandbox may exist: nothing is sent again."""
    requests: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"

        def serve() -> None:
            listener.settimeout(30)
            with listener.accept()[0] as conn:
                requests.append(conn.recv(65536))
            listener.settimeout(1)
            try:
                listener.accept()[0].close()
                requests.append(b"a second connection")
            except TimeoutError:
                pass

        server = threading.Thread(target=serve)
        server.start()
        code, out, err, _ = agentcell("--url", url, "sandbox", "create", env={"AGENTCELL_API_KEY": "k"})
        server.join()
    assert len(requests) == 1 and requests[0].startswith(b"POST /v1/sandboxes HTTP/1.0\r\n")
    assert (code, out) == (1, "")
    lost = "the server closed the connection without answering"
    assert err == f"error: the connection to the agentcell server at {url} failed: {lost}\n"
