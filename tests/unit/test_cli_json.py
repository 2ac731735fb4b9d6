"""The CLI for scripts, without a server: which commands take --json, the one JSON writer, and bad
option values as usage errors (exit 2, naming the option) before any request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from agentcell.cli.durations import parse_duration
from agentcell.cli.main import cli
from agentcell.cli.output import echo_json
from agentcell.client import CommandResult, SandboxInfo

NO_SERVER = "http://127.0.0.1:1"  # a request would fail with exit 1, so exit 2 means none was sent
SILENT = {
    ("serve",),
    ("sandbox", "kill"),
    ("fn", "rm"),
    ("session", "rm"),
    ("workspace", "rm"),
    ("template", "rm"),
    ("tenant", "rm"),
}
"""Commands that print nothing on success (their exit status is the whole result): no --json."""


def commands(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # as click lists them: a lazy group imports on demand
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            yield from commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_command_that_prints_something_takes_json() -> None:
    """A command either takes --json or is one of the silent ones: a new command must be sorted
    into one or the other."""
    without = {path for path, command in commands(cli) if not any("--json" in p.opts for p in command.params)}
    assert without == SILENT


def printed(document: object) -> bytes:
    @click.command()
    def show() -> None:
        echo_json(document)

    result = CliRunner().invoke(show)
    assert result.exit_code == 0, result.output
    return result.stdout_bytes


def test_json_of_models_dataclasses_and_lists() -> None:
    """Models as their wire JSON, dataclasses field by field, lists as arrays; one document."""
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    info = SandboxInfo(
        id="sbx_1", template="base", state="running", env_keys=[], metadata={"who": "zoë"}, cpu=1,
        memory_mb=512, disk_mb=1024, created_at=now, expires_at=now,
    )  # fmt: skip
    assert json.loads(printed([info])) == [info.model_dump(mode="json")]
    assert "zoë" in printed(info).decode()  # UTF-8 as it is, not \u escapes
    result = json.loads(printed(CommandResult(stdout="hi\n", stderr="", exit_code=3)))
    assert (result["stdout"], result["exit_code"], result["timed_out"], result["error"]) == (
        "hi\n",
        3,
        False,
        None,
    )


def test_json_survives_undecodable_output() -> None:
    """A lone surrogate (bytes a command wrote that are not UTF-8) is escaped: still valid JSON."""
    out = printed({"stdout": "a\udcffb"})
    assert json.loads(out.decode("utf-8")) == {"stdout": "a\udcffb"}


def test_durations_have_a_ceiling_when_asked() -> None:
    """`max_s` refuses longer durations, saying the limit in the same units."""
    assert parse_duration("7d", max_s=7 * 86400) == 7 * 86400
    with pytest.raises(ValueError, match="'8d' is more than 7d, the longest allowed"):
        parse_duration("8d", max_s=7 * 86400)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["sandbox", "create", "--timeout", "-5"], "'--timeout': '-5' is negative"),
        (["sandbox", "create", "--timeout", "10x"], "'--timeout': '10x' is not a duration"),
        (["sandbox", "create", "--timeout", "8d"], "'--timeout': '8d' is more than 7d"),
        (["sandbox", "resume", "sbx_1", "--timeout", "0"], "'--timeout': '0' is zero"),
        (["sandbox", "timeout", "sbx_1", "-5"], "'DURATION': '-5' is negative"),
        (["sandbox", "create", "--cpu", "0"], "'--cpu'"),
        (["sandbox", "create", "--memory-mb", "-1"], "'--memory-mb'"),
        (["sandbox", "create", "--memory-mb", "8"], "'--memory-mb': 8 is not in the range x>=32"),
        (["fn", "deploy", ".", "--name", "x", "--cmd", "a", "--memory-mb", "8"], "'--memory-mb'"),
        (["sandbox", "create", "--disk-mb", "0"], "'--disk-mb'"),
        (["sandbox", "create", "--allow", "bad::dest"], "'--egress' / '--allow' / '--deny': allow[0]"),
        (["sandbox", "create", "--egress", "allowlist"], "needs at least one allow entry"),
        (["exec", "sbx_1", "--timeout", "-5", "--", "true"], "'--timeout'"),
        (["run-code", "sbx_1", "--timeout", "-1", "1"], "'--timeout'"),
        (["tenant", "create", "acme", "--max-rps", "0.001"], "'--max-rps'"),
        (["tenant", "set", "acme", "--max-memory", "lots"], "'--max-memory'"),
        (["usage", "--since", "yesterday"], "'--since'"),
        (["usage", "--json", "--format", "csv"], "--format csv, not both"),
    ],
)
def test_bad_option_values_are_usage_errors(args: list[str], says: str) -> None:
    """Negative or zero durations and sizes, bad formats and contradictions exit 2, naming the
    option, and send nothing."""
    result = CliRunner().invoke(cli, ["--url", NO_SERVER, *args])
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_zero_turns_periodic_snapshots_off(tmp_path: Path) -> None:
    """--sync-interval's help says "0: off", and the server takes 0: the CLI must too."""
    assert parse_duration("0", zero_means="off") == 0
    with pytest.raises(ValueError, match="is zero"):
        parse_duration("0")
    deploy = ["fn", "deploy", str(tmp_path), "--name", "x", "--cmd", "a", "--sync-interval", "0"]
    args = ["--url", NO_SERVER, *deploy]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1 and "is zero" not in result.output, result.output  # (no server there)


def test_bad_build_network_is_a_usage_error(tmp_path: Path) -> None:
    """template build checks --network/--allow before sending anything."""
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"commands": ["true"]}))
    args = ["--url", NO_SERVER, "template", "build", str(recipe), "--network", "allowlist"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "'--network' / '--allow'" in result.output, result.output
