"""What every CLI command shares: the server to talk to, `K=V` options, and how errors are shown.

Errors the CLI expects (the server refused, it is unreachable, a local file is missing) print
`error: <message>` on stderr and exit 1; usage errors (an unknown flag, a missing argument, a
value an option does not take) are click's: a message naming the option, exit 2.

Every run of `agentcell` imports this module, `--version` included, so it imports neither pydantic
nor the SDK's client classes at module level; a command that uses them has imported them already.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from agentcell.client.errors import AgentcellAPIError, AgentcellClientError, InternalServerError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from agentcell.client import Agentcell, Sandbox


@dataclass(frozen=True, slots=True)
class Connection:
    """The global `--url` / `--api-key`; None lets the SDK fall back to its environment variables."""

    api_url: str | None = None
    api_key: str | None = None

    @contextlib.contextmanager
    def sandbox(self, sandbox_id: str) -> Iterator[Sandbox]:
        """A connected Sandbox that is closed, not killed, afterwards."""
        from agentcell.client import Sandbox

        sandbox = Sandbox.connect(sandbox_id, api_url=self.api_url, api_key=self.api_key)
        try:
            yield sandbox
        finally:
            sandbox.close()

    def agentcell(self) -> Agentcell:
        """A client for functions and sessions; use it in `with`, which closes it."""
        from agentcell.client import Agentcell

        return Agentcell(api_url=self.api_url, api_key=self.api_key)


pass_connection = click.make_pass_decorator(Connection)
M = TypeVar("M", bound="BaseModel")


class CliError(click.ClickException):
    """An expected failure: `error: <message>` on stderr, exit status 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def describe(exc: BaseException) -> str:
    if isinstance(exc, InternalServerError) and exc.request_id:
        return f"{exc.message} (request {exc.request_id})"
    if isinstance(exc, AgentcellAPIError):
        return exc.message
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


class ErrorReportingGroup(click.Group):
    """Turns SDK and local file errors raised by any subcommand into CliError."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (AgentcellClientError, OSError) as exc:
            raise CliError(describe(exc)) from exc


def parse_pairs(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """Click callback for repeatable `K=V` options."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", param=param)
        pairs[key] = val
    return pairs


def validate_options(model: type[M], fields: Mapping[str, Any], *options: str) -> M:
    """`model` built from option values here, so that a value it refuses is a usage error (exit 2)
    naming `options` rather than the SDK's refusal (exit 1) naming a wire field."""
    from pydantic import ValidationError

    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        message = "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in exc.errors())
        raise click.BadParameter(message, param_hint=" / ".join(f"'{o}'" for o in options)) from None
