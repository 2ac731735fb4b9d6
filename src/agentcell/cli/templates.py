"""`agentcell template …`: build (streams the build log), ls, get, rm.

agentcell template build ./templates/data-science/recipe.json --network open
agentcell template ls
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from agentcell.cli.context import CliError, Connection, pass_connection, validate_options
from agentcell.cli.output import echo_json, json_always_option, json_option
from agentcell.cli.table import render_table
from agentcell.client import BuildEvent, TemplateBuildError, TemplateInfo, load_recipe
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.templates import BuildLogEvent, BuildStepEvent


@click.group("template")
def template_group() -> None:
    """Build, list and delete templates (recipes built into read-only layers)."""


@template_group.command("build")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Template name (default: the recipe's directory name).")
@click.option("--description", default=None, help="Shown by `template ls`.")
@click.option(
    "--network",
    type=click.Choice(["none", "allowlist", "open"]),
    default="none",
    show_default=True,
    help="The build's egress (pip/npm/apt from the internet need allowlist or open).",
)
@click.option("--allow", multiple=True, metavar="HOST[:PORT]", help="With --network allowlist; repeatable.")
@click.option("--quiet", is_flag=True, help="Print only step names, not the build's output.")
@json_option
@pass_connection
def build(
    conn: Connection,
    recipe: Path,
    name: str | None,
    description: str | None,
    network: str,
    allow: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Build RECIPE (a JSON file; `files` entries may use `src` for local files) into a template,
    streaming its log (with --json: all of it on stderr, the template's record on stdout at the
    end). Exits 1 if a step fails; nothing is registered then."""
    template_name = name or recipe.resolve().parent.name
    parsed = load_recipe(recipe)
    fields = {"egress": network, "allow": list(allow)}
    policy = validate_options(NetworkPolicy, fields, "--network", "--allow")
    with conn.agentcell() as client:
        try:
            info = client.templates.build(
                template_name,
                parsed,
                description=description,
                network=policy,
                on_event=_printer(quiet, log_to_stderr=as_json),
            )
        except TemplateBuildError as exc:
            raise CliError(f"template {template_name!r} failed to build: {exc.error}") from None
    click.echo(f"template {info.name} ready in {info.build_s:.1f} s ({_size(info.size_bytes)})", err=True)
    if as_json:
        echo_json(info)


def _printer(quiet: bool, *, log_to_stderr: bool) -> Callable[[BuildEvent], None]:
    def show(event: BuildEvent) -> None:
        if isinstance(event, BuildStepEvent):
            click.echo(f"[{event.index}/{event.total}] {event.name}", err=True)
        elif isinstance(event, BuildLogEvent) and not quiet:
            stream = sys.stdout if event.stream == "stdout" and not log_to_stderr else sys.stderr
            stream.write(event.data)
            stream.flush()

    return show


@template_group.command("ls")
@json_option
@pass_connection
def list_templates(conn: Connection, as_json: bool) -> None:
    """List templates: base, then the built ones."""
    with conn.agentcell() as client:
        found = client.templates.list()
    if as_json:
        echo_json(found)
    else:
        click.echo(format_templates(found))


@template_group.command("get")
@click.argument("name")
@json_always_option
@pass_connection
def get(conn: Connection, name: str) -> None:
    """Print a template's record as JSON (its recipe without file contents, env, size)."""
    with conn.agentcell() as client:
        echo_json(client.templates.get(name))


@template_group.command("rm")
@click.argument("name")
@pass_connection
def remove(conn: Connection, name: str) -> None:
    """Delete a template (refused while a running sandbox uses it)."""
    with conn.agentcell() as client:
        if not client.templates.delete(name):
            raise CliError(f"template {name!r} not found")


def format_templates(templates: Sequence[TemplateInfo]) -> str:
    rows = [
        [
            t.name,
            "-" if t.built_at is None else t.built_at.strftime("%Y-%m-%d %H:%M"),
            "-" if t.built_at is None else f"{t.build_s:.1f}s",
            _size(t.size_bytes),
            str(t.instances),
            t.description,
        ]
        for t in templates
    ]
    return render_table(["NAME", "BUILT", "BUILD", "SIZE", "SANDBOXES", "DESCRIPTION"], rows)


def _size(size_bytes: int) -> str:
    return f"{size_bytes / (1 << 20):.1f} MiB" if size_bytes else "-"
