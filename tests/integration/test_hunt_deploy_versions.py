"""Function versions on the real server and Linux driver: concurrent deploys of one function each
get their own version (none clobbers another's code), the code of older versions goes once no
instance runs it, a failed redeploy changes nothing, and a config holding a NUL (which could never
start an instance) is refused at deploy."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sqlite3
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, ServerFactory, ServerProcess
from tests.integration.conftest import FIXTURES

KEY = "x-agentcell-session-id"
ECHO: dict[str, Any] = {"cmd": "python3 app.py"}
APP = (FIXTURES / "echo_fn" / "app.py").read_bytes()


def code_with(marker: str, padding: int = 0) -> bytes:
    """The echo function plus a file naming this upload (and some padding, so unpacking takes time)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("app.py", APP), ("marker.txt", marker.encode()), ("pad", b"\0" * padding)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def put(api: httpx.Client, name: str, code: bytes, config: dict[str, Any] | None = None) -> httpx.Response:
    files: dict[str, tuple[str | None, str | bytes]] = {
        "config": (None, json.dumps(config or ECHO)),
        "code": ("code.tar.gz", code),
    }
    return api.put(f"/v1/functions/{name}", files=files)


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.05)


def versions_on_disk(server: ServerProcess, name: str) -> list[str]:
    root = server.state_dir / "functions" / name
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def recorded_versions(server: ServerProcess, name: str) -> list[int]:
    with contextlib.closing(sqlite3.connect(f"file:{server.state_dir / 'meta.db'}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT version FROM functions WHERE name = ? ORDER BY version", (name,))
        return [row[0] for row in rows]


def marker_served(api: httpx.Client, name: str, key: str) -> str:
    reply = api.get(f"/fn/{name}/file", params={"path": "/code/marker.txt"}, headers={KEY: key})
    assert reply.status_code == 200, reply.text
    text: str = reply.json()["text"]
    return text


def test_concurrent_deploys_of_one_function_get_a_version_each(
    api: httpx.Client, fn_name: str, shared_server: ServerProcess
) -> None:
    uploads = {f"upload-{i}": code_with(f"upload-{i}", padding=8 << 20) for i in range(6)}
    with ThreadPoolExecutor(len(uploads)) as pool:
        sent = pool.map(lambda code: put(api, fn_name, code), uploads.values())
        replies = dict(zip(uploads, sent, strict=True))
    assert [r.status_code for r in replies.values()] == [200] * 6, [r.text for r in replies.values()]
    versions = {marker: reply.json()["version"] for marker, reply in replies.items()}
    assert sorted(versions.values()) == [1, 2, 3, 4, 5, 6]
    newest = max(versions, key=lambda m: versions[m])
    assert api.get(f"/v1/functions/{fn_name}").json()["version"] == 6
    assert marker_served(api, fn_name, "c1") == newest
    wait_for(
        lambda: versions_on_disk(shared_server, fn_name) == ["v6"], "only the newest version's code left"
    )


def test_old_versions_code_goes_once_no_instance_runs_it(
    api: httpx.Client, fn_name: str, shared_server: ServerProcess
) -> None:
    first = put(api, fn_name, code_with("one"))
    assert first.status_code == 200
    created_at = first.json()["created_at"]
    assert marker_served(api, fn_name, "bound") == "one"  # a session bound to v1's instance
    for marker in ("two", "three"):
        assert put(api, fn_name, code_with(marker)).status_code == 200
    wait_for(lambda: versions_on_disk(shared_server, fn_name) == ["v1", "v3"], "v2's code removed")
    assert marker_served(api, fn_name, "bound") == "one"  # the bound session keeps its code
    assert marker_served(api, fn_name, "fresh") == "three"
    session = next(
        s for s in api.get(f"/v1/functions/{fn_name}/sessions").json()["sessions"] if s["key"] == "bound"
    )
    assert api.delete(f"/v1/sessions/{session['id']}").status_code == 204
    wait_for(
        lambda: versions_on_disk(shared_server, fn_name) == ["v3"], "v1's code removed after its session"
    )
    for i in range(20):
        assert put(api, fn_name, code_with(f"again-{i}")).status_code == 200
    assert marker_served(api, fn_name, "fresh") == "three"
    wait_for(lambda: versions_on_disk(shared_server, fn_name) == ["v23", "v3"], "only v23 and v3 left")
    wait_for(
        lambda: recorded_versions(shared_server, fn_name) == [1, 3, 23], "records: first, running, latest"
    )
    assert api.get(f"/v1/functions/{fn_name}").json()["created_at"] == created_at


def test_a_failed_redeploy_changes_nothing(
    api: httpx.Client, fn_name: str, shared_server: ServerProcess
) -> None:
    assert put(api, fn_name, code_with("good")).status_code == 200
    bad = put(api, fn_name, code_with("good")[:100])
    assert bad.status_code == 400, bad.text
    assert api.get(f"/v1/functions/{fn_name}").json()["version"] == 1
    assert versions_on_disk(shared_server, fn_name) == ["v1"]
    assert marker_served(api, fn_name, "k") == "good"


HOOK = {"cmd": "true\u0000; echo injected"}
NUL_CONFIGS: dict[str, dict[str, Any]] = {
    "env": {**ECHO, "env": {"A": "x\u0000PORT=1"}},
    "cmd": {"cmd": "python3 app.py\u0000"},
    "stdio": {"stdio": "cat\u0000"},
    "initialize": {**ECHO, "initialize": HOOK},
    "pre_stop": {**ECHO, "pre_stop": HOOK},
    "workspace.restore": {**ECHO, "workspace": {"persist": True, "restore": HOOK}},
}


@pytest.mark.parametrize("field", sorted(NUL_CONFIGS))
def test_a_nul_in_a_config_string_is_refused_at_deploy(api: httpx.Client, fn_name: str, field: str) -> None:
    reply = put(api, fn_name, code_with("x"), NUL_CONFIGS[field])
    assert reply.status_code == 400, reply.text
    message = reply.json()["message"]
    assert field in message and "NUL" in message, message
    assert api.get(f"/v1/functions/{fn_name}").status_code == 404


def test_the_code_dir_of_a_deleted_function_is_gone(
    api: httpx.Client, fn_name: str, shared_server: ServerProcess, tmp_path: Path
) -> None:
    assert put(api, fn_name, code_with("x")).status_code == 200
    assert marker_served(api, fn_name, "k") == "x"
    assert api.delete(f"/v1/functions/{fn_name}").status_code == 204
    assert not (shared_server.state_dir / "functions" / fn_name).exists()


def test_a_restart_removes_unused_versions_and_cut_short_deploys(server_factory: ServerFactory) -> None:
    """Code a crash left behind: versions no instance runs, a deploy's staging directory."""
    server = server_factory()
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        for marker in ("one", "two", "three"):
            assert put(api, "kept", code_with(marker)).status_code == 200
    server.stop(signal.SIGKILL)
    functions = server.state_dir / "functions" / "kept"
    for leftover in ("v1", "v2", ".staging-cut-short"):  # (v1, v2: as the code before this left them)
        (functions / leftover).mkdir(exist_ok=True)
    restarted = server_factory(state_dir=server.state_dir)
    assert versions_on_disk(restarted, "kept") == ["v3"]
    assert recorded_versions(restarted, "kept") == [1, 3]
    with httpx.Client(base_url=restarted.url, headers=AUTH, timeout=60) as api:
        assert marker_served(api, "kept", "k") == "three"
        assert api.delete("/v1/functions/kept").status_code == 204
