"""Metering on the real server: a session that burns CPU shows it (from the instance's cgroup),
with active and idle time; sessions add up to the tenant; JSON and CSV; bad queries are 400."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import deploy

KEY = "x-agentcell-session-id"


@pytest.fixture
def fn(api: httpx.Client) -> Iterator[str]:
    name = "usage-" + uuid.uuid4().hex[:8]
    assert deploy(api, name, {"cmd": "python3 app.py", "cpu": 1, "memory_mb": 256}).status_code == 200
    yield name
    api.delete(f"/v1/functions/{name}")


def test_a_session_s_cpu_and_active_time_are_metered(api: httpx.Client, fn: str) -> None:
    key = "burner-" + uuid.uuid4().hex[:6]
    reply = api.get(f"/fn/{fn}/burn", params={"s": 0.6}, headers={KEY: key})
    assert reply.status_code == 200, reply.text
    usage = api.get("/v1/usage", params={"by": "session"}).json()
    line = next(line for line in usage["lines"] if line["session_key"] == key)
    assert line["function"] == fn and line["tenant"] == "default"
    assert line["cpu_s"] >= 0.5, line  # measured by the cgroup, not estimated
    assert line["active_s"] >= 0.55 and line["idle_s"] >= 0
    assert line["memory_gib_s"] > 0 and line["cost"] > 0
    by_tenant = api.get("/v1/usage", params={"by": "tenant"}).json()
    assert by_tenant["lines"][0]["cost"] == pytest.approx(usage["total"]["cost"], rel=0.05)


def test_usage_as_csv_and_bad_queries(api: httpx.Client, fn: str) -> None:
    api.get(f"/fn/{fn}/whoami", headers={KEY: "csv-" + uuid.uuid4().hex[:6]})
    reply = api.get("/v1/usage", params={"by": "function", "format": "csv"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(reply.text)))
    assert any(row["function"] == fn for row in rows)
    assert {"active_s", "idle_s", "cpu_s", "memory_gib_s", "storage_gib_h", "cost"} <= set(rows[0])
    backwards = api.get(
        "/v1/usage", params={"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"}
    )
    assert backwards.status_code == 400 and "before" in backwards.json()["message"]
    assert api.get("/v1/usage", params={"by": "planet"}).status_code == 400
    assert api.get("/v1/usage", params={"since": "yesterday"}).status_code == 400


def test_a_sandbox_is_active_while_a_command_runs(api: httpx.Client) -> None:
    sandbox = api.post("/v1/sandboxes", json={"timeout_s": 60}).json()["id"]
    try:
        burn = {
            "cmd": "python3 -c 'import time; t=time.process_time()+0.5\nwhile time.process_time()<t: pass'"
        }
        assert api.post(f"/v1/sandboxes/{sandbox}/commands", json=burn).status_code == 200
    finally:
        api.delete(f"/v1/sandboxes/{sandbox}")
    usage = api.get("/v1/usage", params={"by": "sandbox"}).json()
    line = next(line for line in usage["lines"] if line["sandbox_id"] == sandbox)
    assert line["cpu_s"] >= 0.4 and line["active_s"] >= 0.45


def test_the_cli_prints_usage_as_csv_and_table(server_url: str) -> None:
    from click.testing import CliRunner

    from agentcell.cli.main import cli

    args = ["--url", server_url, "usage", "default", "--by", "tenant", "--format", "csv"]
    csv_run = CliRunner().invoke(cli, args)
    assert csv_run.exit_code == 0, csv_run.output
    assert csv_run.output.startswith("tenant,function,session_key")
    table = CliRunner().invoke(cli, ["--url", server_url, "usage", "--by", "kind", "--since", "2026-01-01"])
    assert table.exit_code == 0, table.output
    assert "ACTIVE S" in table.output and "COST" in table.output
    bad = CliRunner().invoke(cli, ["--url", server_url, "usage", "--since", "last tuesday"])
    assert bad.exit_code == 2 and "--since" in bad.output


def test_a_sandbox_is_active_while_code_runs(api: httpx.Client) -> None:
    sandbox = api.post("/v1/sandboxes", json={"timeout_s": 60}).json()["id"]
    try:
        run = api.post(f"/v1/sandboxes/{sandbox}/code", json={"code": "import time; time.sleep(1.2)"})
        assert run.status_code == 200, run.text
    finally:
        api.delete(f"/v1/sandboxes/{sandbox}")
    usage = api.get("/v1/usage", params={"by": "sandbox"}).json()
    line = next(line for line in usage["lines"] if line["sandbox_id"] == sandbox)
    assert line["active_s"] >= 1.1  # an execution is work in flight, like a command
