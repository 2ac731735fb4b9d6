"""`agentcell fn` and `agentcell session` without a server: durations, usage errors (exit 2), the
options each command turns into a request (through a fake transport), and the text output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from agentcell.cli.context import Connection
from agentcell.cli.durations import format_duration, parse_duration
from agentcell.cli.main import cli
from agentcell.client import Agentcell
from tests.unit.test_client_functions import FakeServer, deployed


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    """Every CLI command's client talks to this fake server."""
    fake = FakeServer()
    monkeypatch.setattr(
        Connection, "agentcell", lambda self: Agentcell(api_url="http://ac.test", transport=fake.transport)
    )
    return fake


DEPLOY = ["fn", "deploy", ".", "--name", "x", "--cmd", "y"]


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("6h", 21600),
        ("2d", 172800),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        (" 2H ", 7200),
        ("1h 30m", 5400),
    ],
)
def test_durations(text: str, seconds: int) -> None:
    """Seconds alone or amounts with units, largest first, combined."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("-5", "negative"),
        ("-1h", "negative"),
        ("0", "zero"),
        ("0h0m", "zero"),
        ("", "not a duration"),
        ("6hours", "not a duration"),
        ("30m1h", "not a duration"),
        ("1.5h", "not a duration"),
        ("h", "not a duration"),
    ],
)
def test_bad_durations_say_what_to_write(text: str, says: str) -> None:
    """Every refusal names the problem and shows the accepted forms."""
    with pytest.raises(ValueError, match=says) as info:
        parse_duration(text)
    assert "15m" in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "-"), (-3, "-"), (45, "45s"), (900, "15m"), (5400, "1h30m"), (3605, "1h"), (93784, "1d2h")],
)
def test_format_duration(seconds: float, shown: str) -> None:
    """At most the two largest units, in the form the options accept."""
    assert format_duration(seconds) == shown


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["session", "create", "chat", "--ttl", "5x"], "not a duration"),
        (["session", "create", "chat", "--ttl", "-1h"], "negative"),
        (["session", "renew", "ses_1"], "--idle-timeout"),
        (["session", "ls", "--state", "gone"], "'gone' is not one of"),
        (["session", "ls", "--state", "ended"], "`agentcell session get ID` shows one"),
        ([*DEPLOY, "--affinity", "sticky"], "'sticky' is not one of"),
        ([*DEPLOY, "--min-warm", "-1"], "-1 is not in the range"),
        ([*DEPLOY, "--cpu", "0"], "0.0 is not in the range"),
        ([*DEPLOY, "--session-ttl", "6 hours"], "not a duration"),
        ([*DEPLOY, "--init-timeout", "5s"], "needs --init-hook"),
        ([*DEPLOY, "--pre-stop-hook", "z", "--pre-stop-timeout", "2h"], "less than or equal to 3600"),
        (["fn", "deploy", "./no-such-dir", "--name", "x", "--cmd", "y"], "does not exist"),
        (["fn", "deploy", "."], "Missing option '--name'"),
    ],
)
def test_usage_errors_exit_2(server: FakeServer, args: list[str], says: str) -> None:
    """Bad durations, negative numbers, unknown choices and missing pairs are usage errors, before
    any request."""
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert server.requests == []


def test_quickstart_deploy_maps_options_to_the_config(server: FakeServer, tmp_path: Path) -> None:
    """The issue's deploy line sends exactly its options, durations as seconds."""
    (tmp_path / "app.py").write_text("print()")
    result = run(
        "fn", "deploy", str(tmp_path), "--name", "chat", "--cmd", "python3 app.py",
        "--affinity", "header", "--sessions-per-instance", "1", "--session-ttl", "6h",
        "--idle-timeout", "15m", "--min-warm", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output == "deployed chat version 3: http://ac.test/fn/chat/\n"
    assert deployed(server)[0] == {
        "cmd": "python3 app.py",
        "affinity": {"kind": "header"},
        "sessions_per_instance": 1,
        "session_ttl_s": 21600,
        "idle_timeout_s": 900,
        "min_warm": 2,
    }


def test_every_deploy_option(server: FakeServer, tmp_path: Path) -> None:
    """Each option lands in its config field; --json prints the FunctionInfo."""
    result = run(
        "fn", "deploy", str(tmp_path), "--name", "chat", "--cmd", "x", "--port", "9000",
        "--env", "A=1", "--metadata", "team=a", "--cpu", "0.5", "--memory-mb", "256", "--disk-mb", "64",
        "--affinity", "header", "--session-header", "x-s", "--sessions-per-instance", "4",
        "--disable-session-id-reuse", "--max-instances", "9", "--concurrency", "3",
        "--init-hook", "./init", "--init-timeout", "1m", "--pre-stop-hook", "./stop",
        "--ready-timeout", "45s", "--request-timeout", "5m", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["name"] == "chat"
    assert deployed(server)[0] == {
        "cmd": "x",
        "port": 9000,
        "env": {"A": "1"},
        "metadata": {"team": "a"},
        "cpu": 0.5,
        "memory_mb": 256,
        "disk_mb": 64,
        "affinity": {"kind": "header", "header": "x-s"},
        "sessions_per_instance": 4,
        "disable_session_id_reuse": True,
        "max_instances": 9,
        "concurrency_per_instance": 3,
        "initialize": {"cmd": "./init", "timeout_s": 60.0},
        "pre_stop": {"cmd": "./stop"},
        "ready_timeout_s": 45.0,
        "request_timeout_s": 300.0,
    }


def test_session_commands(server: FakeServer) -> None:
    """create prints the id alone (for `id=$(agentcell session create …)`) or, with --json, the
    session; renew prints its row, ls a table, get JSON; options become the request body."""
    created = run("session", "create", "chat", "--key", "alice-1", "--ttl", "1h", "--metadata", "u=a")
    assert (created.exit_code, created.output) == (0, "ses_1\n"), created.output
    assert server.body("POST /v1/functions/chat/sessions") == {
        "key": "alice-1",
        "ttl_s": 3600,
        "metadata": {"u": "a"},
    }
    assert json.loads(run("session", "create", "chat", "--json").output)["key"] == "alice-1"
    assert run("session", "renew", "ses_1", "--idle-timeout", "2h").exit_code == 0
    assert server.body("PATCH /v1/sessions/ses_1") == {"idle_timeout_s": 7200}
    listed = run("session", "ls", "chat", "--state", "idle", "--json")
    assert [s["id"] for s in json.loads(listed.output)] == ["ses_1"]
    assert server.last("GET /v1/functions/chat/sessions").url.params["state"] == "idle"
    assert "ses_1" in run("session", "ls").output.splitlines()[1]
    assert json.loads(run("session", "get", "ses_1").output)["key"] == "alice-1"
    assert run("session", "rm", "ses_1").exit_code == 0


def test_function_commands_and_errors(server: FakeServer) -> None:
    """ls is a table with the gateway URL, get is JSON; a missing function or session is
    `error: …` and exit 1."""
    table = run("fn", "ls").output.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "AFFINITY", "INSTANCES", "WARM", "SESSIONS", "URL"]
    assert table[1].split() == ["chat", "3", "header", "0", "0", "0", "http://ac.test/fn/chat/"]
    assert json.loads(run("fn", "get", "chat").output)["version"] == 3
    assert run("fn", "rm", "chat").exit_code == 0
    for args, message in [
        (["fn", "rm", "other"], "error: function 'other' not found"),
        (["fn", "get", "other"], "error: gone"),
        (["session", "rm", "ses_x"], "error: session 'ses_x' not found or already ended"),
    ]:
        result = run(*args)
        assert (result.exit_code, result.output.strip()) == (1, message)
