"""What a run of `agentcell` imports: only the modules of the subcommand it runs (the SDK and its
wire models cost ~35 bare interpreter starts of CPU when all imported), and the same names from
`agentcell.client` as before. Checked in sys.modules of a fresh interpreter, not timed."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

import agentcell.client
from agentcell.cli.main import SUBCOMMANDS, cli

RUN_CLI = """
from agentcell.cli.main import main
sys.argv[0] = "agentcell"
try:
    main()
except SystemExit:
    pass
"""
"""The CLI as its console script runs it."""

OTHER_COMMANDS = {f"agentcell.cli.{sub.target.partition(':')[0]}" for sub in SUBCOMMANDS}
WIRE_MODELS_OF_OTHER_COMMANDS = {"agentcell.protocol.functions", "agentcell.protocol.templates"}


def imported_by(*args: str, code: str = RUN_CLI) -> tuple[str, set[str]]:
    """What `code` run with ARGS in a fresh interpreter printed, and the modules it imported."""
    report = "\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)"
    program = f"import json, sys\n{code}{report}"
    done = subprocess.run(
        [sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout, set(json.loads(done.stderr.splitlines()[-1]))


def test_version_imports_no_subcommand_nor_the_sdk() -> None:
    """`agentcell --version` imports no subcommand, no wire model, neither httpx nor pydantic."""
    out, modules = imported_by("--version")
    assert out.startswith("agentcell, version ")
    heavy = {"httpx", "pydantic", "agentcell.protocol.common", "agentcell.client.api"}
    assert not (OTHER_COMMANDS | heavy) & modules


def test_help_lists_every_command_without_importing_one() -> None:
    """`agentcell --help` lists each subcommand with its one-line help, from main.py's table."""
    out, modules = imported_by("--help")
    rows = out.split("Commands:\n", 1)[1].splitlines()
    listed = [row.split()[0] for row in rows if row.startswith("  ") and row[2] != " "]
    assert listed == sorted(sub.name for sub in SUBCOMMANDS)
    assert not OTHER_COMMANDS & modules


def test_a_sandbox_command_imports_only_what_sandboxes_need() -> None:
    """Resolving `sandbox create` imports its module and the SDK's sandbox half, not the modules
    (or wire models) of functions, templates, tenants or usage."""
    out, modules = imported_by("sandbox", "create", "--help")
    assert out.startswith("Usage: agentcell sandbox create")
    assert {"agentcell.cli.sandboxes", "agentcell.protocol.sandboxes"} <= modules
    assert not (OTHER_COMMANDS - {"agentcell.cli.sandboxes"} | WIRE_MODELS_OF_OTHER_COMMANDS) & modules


@pytest.mark.parametrize("limit", [20, 45, 74, 200])
def test_the_table_lists_what_each_command_would(limit: int) -> None:
    """Each table entry names a command of that name whose own short help (as click shortens it
    for `--help` at any width) is what the entry lists."""
    ctx = click.Context(cli)
    for sub in SUBCOMMANDS:
        command = cli.get_command(ctx, sub.name)
        assert command is not None and command.name == sub.name
        stand_in = click.Command(sub.name, help=sub.summary)
        assert stand_in.get_short_help_str(limit) == command.get_short_help_str(limit), sub.name


def test_the_sdk_still_exports_every_name() -> None:
    """Every name in agentcell.client.__all__ resolves, to the object its module defines; an
    unknown name is an AttributeError."""
    for name in agentcell.client.__all__:
        assert getattr(agentcell.client, name) is not None
    assert set(dir(agentcell.client)) >= set(agentcell.client.__all__)
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = agentcell.client.no_such_name


def test_importing_one_sdk_name_imports_only_its_part() -> None:
    """`from agentcell.client import AsyncSandbox` imports the sandbox half of the SDK only."""
    _, modules = imported_by(code="from agentcell.client import AsyncSandbox")
    assert "agentcell.client.sandbox" in modules
    others = {"agentcell.client.functions", "agentcell.client.templates", "agentcell.client.tenants"}
    assert not others & modules
