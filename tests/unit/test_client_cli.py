"""The CLI's pure parts: locations, K=V options, the table, progress, usage errors and serve's argv."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentcell.cli.main import cli
from agentcell.cli.progress import Progress, human_bytes
from agentcell.cli.remote import Remote, parse_location
from agentcell.cli.sandboxes import format_table
from agentcell.cli.serve import server_flags
from agentcell.client import SandboxInfo


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sbx_1a:/home/user/x", Remote("sbx_1a", "/home/user/x")),
        ("sbx_1a:rel/x", Remote("sbx_1a", "rel/x")),
        ("sbx_1a:", Remote("sbx_1a", "/home/user")),
        ("./a:b", Path("./a:b")),
        ("/abs/path", Path("/abs/path")),
        ("plain.txt", Path("plain.txt")),
    ],
)
def test_locations(text: str, expected: Remote | Path) -> None:
    """ID:PATH is remote, anything else (incl. ./a:b) is local."""
    assert parse_location(text) == expected


def test_table_lists_every_sandbox() -> None:
    """The ls table has a header row and one row per sandbox."""
    now = datetime.now(UTC)
    info = SandboxInfo(
        id="sbx_abc",
        template="base",
        state="running",
        env_keys=[],
        metadata={"team": "x"},
        cpu=0.5,
        memory_mb=256,
        disk_mb=1024,
        created_at=now,
        expires_at=now + timedelta(seconds=90),
    )
    lines = format_table([info]).splitlines()
    assert lines[0].split()[:3] == ["ID", "TEMPLATE", "STATE"]
    assert lines[1].split()[:3] == ["sbx_abc", "base", "running"] and "team=x" in lines[1]


def test_progress_is_silent_off_a_terminal_and_draws_on_one() -> None:
    """Progress counts always but only draws when enabled."""
    quiet = io.StringIO()
    counter = Progress("uploading", stream=quiet)
    counter.add(10)
    counter.finish()
    assert counter.total_bytes == 10 and quiet.getvalue() == ""
    shown = io.StringIO()
    counter = Progress("uploading", stream=shown, enabled=True, delay_s=0, interval_s=0)
    counter.add(3 << 20)
    counter.finish()
    assert "3.0 MiB" in shown.getvalue() and shown.getvalue().endswith("\r\x1b[K")
    assert human_bytes(512) == "512 B"


@pytest.mark.parametrize(
    "argv",
    [
        ["sandbox", "create", "--env", "NOEQUALS"],
        ["sandbox", "create", "--no-such-flag"],
        ["cp", "a", "b"],
        ["exec"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    """Bad K=V values, unknown flags and two local paths are usage errors: exit 2."""
    result = CliRunner().invoke(cli, ["--url", "http://127.0.0.1:1", *argv])
    assert result.exit_code == 2, result.output


def test_serve_passes_only_given_flags() -> None:
    """`serve` forwards only the flags that were given."""
    assert server_flags(None, 0, "/tmp/s", None) == ["--port", "0", "--state-dir", "/tmp/s"]
    assert server_flags("0.0.0.0", None, None, "fake") == ["--host", "0.0.0.0", "--driver", "fake"]
