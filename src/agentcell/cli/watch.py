"""`agentcell watch SANDBOX_ID:DIR`: the changes to a sandbox directory, one line each, as they
happen, until Ctrl-C or the watch's end (the directory removed or moved, the sandbox ended)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from agentcell.cli.context import Connection, pass_connection
from agentcell.cli.remote import Remote, parse_location

if TYPE_CHECKING:
    from agentcell.client import FileEvent


@click.command("watch")
@click.argument("location", metavar="SANDBOX_ID:DIR")
@click.option("-r", "--recursive", is_flag=True, help="Also watch the directories below DIR.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object a line (kind, name, path) instead of text."
)
@pass_connection
def watch(conn: Connection, location: str, recursive: bool, as_json: bool) -> None:
    """Print each change to SANDBOX_ID:DIR as it happens, one line each: `create  a/b.txt`.

    Kinds: create, write, remove, rename (moved away; its new name comes as a create) and chmod;
    names are relative to DIR. `overflow` says changes were dropped (too many unread). Runs until
    Ctrl-C (exit 130) or until DIR is removed or moved or the sandbox ends (exit 0, the reason on
    stderr).
    """
    remote = parse_location(location)
    if not isinstance(remote, Remote):
        raise click.BadParameter("give the directory as SANDBOX_ID:DIR", param_hint="'SANDBOX_ID:DIR'")
    try:
        with conn.sandbox(remote.sandbox_id) as sandbox:
            with sandbox.files.watch(remote.path, recursive=recursive) as changes:
                for event in changes:
                    click.echo(_line(event, as_json))
            click.echo(f"agentcell: the watch ended: {changes.ended}", err=True)
    except KeyboardInterrupt:
        sys.exit(130)


def _line(event: FileEvent, as_json: bool) -> str:
    if as_json:
        return json.dumps({"kind": event.kind, "name": event.name, "path": event.path}, ensure_ascii=False)
    if event.kind == "overflow":
        return "overflow  (changes were dropped, too many unread: list the directory to catch up)"
    return f"{event.kind:<7} {event.name}"
