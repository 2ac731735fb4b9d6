"""The `agentcell` command: the global options, and every subcommand named in one table.

The table says where each subcommand lives and what `agentcell --help` lists for it: a
subcommand's module is imported only when that subcommand is used (see agentcell.cli.lazy).
"""

from __future__ import annotations

import sys

import click

from agentcell import __version__
from agentcell.cli.context import Connection
from agentcell.cli.lazy import LazyGroup, Subcommand

# name, its module in agentcell.cli and the command there, and the first sentence of its help:
# what `agentcell --help` lists for it (tests/unit/test_cli_start.py checks that they agree).
SUBCOMMANDS = (
    Subcommand("serve", "serve:serve", "Run the agentcell server in the foreground."),
    Subcommand("sandbox", "sandboxes:sandbox_group", "Create, list, inspect and end sandboxes."),
    Subcommand(
        "snapshot",
        "snapshots:snapshot_group",
        "List, inspect and delete sandbox snapshots (`agentcell sandbox snapshot ID` takes one).",
    ),
    Subcommand(
        "exec", "execute:execute", "Run a command in SANDBOX_ID: `agentcell exec SANDBOX_ID -- CMD ARGS…`."
    ),
    Subcommand(
        "run-code",
        "code:run_code",
        "Run CODE (or stdin) in SANDBOX_ID's default context of the language, or in --context.",
    ),
    Subcommand("cp", "cp:copy", "Copy SOURCE to DESTINATION; exactly one of them is SANDBOX_ID:PATH."),
    Subcommand(
        "watch",
        "watch:watch",
        "Print each change to SANDBOX_ID:DIR as it happens, one line each: `create  a/b.txt`.",
    ),
    Subcommand(
        "fn", "functions:function_group", "Deploy, list, inspect and delete functions (served at /fn/NAME/)."
    ),
    Subcommand(
        "session", "sessions:session_group", "Create (pre-warm), list, renew and end sessions of functions."
    ),
    Subcommand(
        "template",
        "templates:template_group",
        "Build, list and delete templates (recipes built into read-only layers).",
    ),
    Subcommand("workspace", "sessions:workspace_group", "List and delete stored session workspaces."),
    Subcommand(
        "usage",
        "usage:usage",
        "Active and idle seconds, CPU seconds, memory GiB-seconds, stored GiB-hours and cost, of the"
        " key's tenant (or TENANT, or * for all, with an admin key).",
    ),
    Subcommand(
        "tenant", "tenants:tenant_group", "Create, list and delete tenants and set their quotas (admin key)."
    ),
    Subcommand("key", "tenants:key_group", "Create, list and revoke API keys (admin key)."),
)


@click.group(cls=LazyGroup, subcommands=SUBCOMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
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


def main() -> None:
    # httpx imports its own command-line client when `rich` is installed (a dev dependency, and
    # common in users' environments): ~0.15 s of CPU on every run of ours, which never uses it.
    # httpx falls back to a stub when that import fails, as it does for a None in sys.modules.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    cli(prog_name="agentcell")
