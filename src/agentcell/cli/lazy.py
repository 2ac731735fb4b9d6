"""A command group whose subcommands are imported only when used.

Each subcommand's module imports the SDK, and through it httpx and the pydantic wire models: all of
them together cost ~35 bare interpreter starts of CPU, which `agentcell --version` or `agentcell
sandbox create` should not pay for `fn deploy` or `template build`. The group knows each
subcommand by name, by where it lives and by its one-line help, and imports the module when the
subcommand runs, or when its own `--help` or shell completion asks for it.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from agentcell.cli.context import ErrorReportingGroup


@dataclass(frozen=True, slots=True)
class Subcommand:
    """A subcommand not imported yet. `summary` is the first sentence of its help, which the
    parent's `--help` lists (shortened as click shortens it); tests/unit/test_cli_start.py
    checks it against the command itself."""

    name: str
    target: str
    """`module:attribute`, the module under agentcell.cli"""
    summary: str

    def load(self) -> click.Command:
        module, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(f"agentcell.cli.{module}"), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"agentcell.cli.{self.target} is not a click command")
        return command


class LazyGroup(ErrorReportingGroup):
    """An ErrorReportingGroup that also holds `Subcommand`s, importing each on first use."""

    def __init__(self, *args: Any, subcommands: Sequence[Subcommand] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subcommands = {sub.name: sub for sub in subcommands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        pending = self.subcommands.get(cmd_name)
        if pending is not None and cmd_name not in self.commands:
            self.add_command(pending.load(), cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click lists commands (same widths and shortening), from the summaries of the
        commands not imported yet instead of importing them."""
        listed = [(name, self._listed_command(name)) for name in self.list_commands(ctx)]
        rows = [(name, command) for name, command in listed if not command.hidden]
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        with formatter.section("Commands"):
            formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in rows])

    def _listed_command(self, name: str) -> click.Command:
        """The command if imported; else a stand-in that click shortens the summary of."""
        if name in self.commands:
            return self.commands[name]
        return click.Command(name, help=self.subcommands[name].summary)
