"""The `agentcell` command: the global options, and every subcommand wired onto one group."""

from __future__ import annotations

import click

from agentcell import __version__
from agentcell.cli.code import run_code
from agentcell.cli.context import Connection, ErrorReportingGroup
from agentcell.cli.cp import copy
from agentcell.cli.execute import execute
from agentcell.cli.functions import function_group
from agentcell.cli.sandboxes import sandbox_group
from agentcell.cli.serve import serve
from agentcell.cli.sessions import session_group, workspace_group
from agentcell.cli.templates import template_group
from agentcell.cli.tenants import key_group, tenant_group
from agentcell.cli.usage import usage


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    "api_url",
    default=None,
    metavar="URL",
    help="Server URL (env AGENTCELL_URL; default http://127.0.0.1:8700).",
)
@click.option("--api-key", default=None, metavar="KEY", help="API key (env AGENTCELL_API_KEY).")
@click.version_option(__version__, prog_name="agentcell")
@click.pass_context
def cli(ctx: click.Context, api_url: str | None, api_key: str | None) -> None:
    """agentcell: sandboxes and session-affine functions for AI agents."""
    ctx.obj = Connection(api_url=api_url, api_key=api_key)


cli.add_command(serve)
cli.add_command(sandbox_group)
cli.add_command(execute)
cli.add_command(run_code)
cli.add_command(copy)
cli.add_command(function_group)
cli.add_command(session_group)
cli.add_command(template_group)
cli.add_command(workspace_group)
cli.add_command(usage)
cli.add_command(tenant_group)
cli.add_command(key_group)


def main() -> None:
    cli(prog_name="agentcell")
