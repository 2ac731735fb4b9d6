"""`agentcell snapshot …`: list, inspect and delete sandbox snapshots (taken with `agentcell sandbox
snapshot ID`, started with `agentcell sandbox create --snapshot SNAPSHOT_ID`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import click

from agentcell.cli.context import CliError, Connection, pass_connection
from agentcell.cli.output import echo_json, json_always_option, json_option
from agentcell.cli.table import render_table
from agentcell.client.sync import Snapshots
from agentcell.protocol.snapshots import SandboxSnapshotInfo

T = TypeVar("T")


def _call(conn: Connection, work: Callable[[Snapshots], T]) -> T:
    """`work` on the client's snapshots, the client closed after."""
    with conn.agentcell() as client:
        return work(client.snapshots)


@click.group("snapshot")
def snapshot_group() -> None:
    """List, inspect and delete sandbox snapshots (`agentcell sandbox snapshot ID` takes one)."""


@snapshot_group.command("ls")
@click.option("--sandbox", "sandbox_id", default=None, metavar="ID", help="Only those taken of this sandbox.")
@click.option("--name", default=None, help="Only the one with this name.")
@json_option
@pass_connection
def list_snapshots(conn: Connection, sandbox_id: str | None, name: str | None, as_json: bool) -> None:
    """List all the tenant's snapshots, oldest first."""
    found = _call(conn, lambda snapshots: snapshots.list(sandbox_id=sandbox_id, name=name))
    if as_json:
        echo_json(found)
    else:
        click.echo(format_table(found))


@snapshot_group.command("get")
@click.argument("snapshot_id")
@json_always_option
@pass_connection
def get(conn: Connection, snapshot_id: str) -> None:
    """Print a snapshot's details as JSON."""
    echo_json(_call(conn, lambda snapshots: snapshots.get(snapshot_id)))


@snapshot_group.command("rm")
@click.argument("snapshot_id")
@json_option
@pass_connection
def remove(conn: Connection, snapshot_id: str, as_json: bool) -> None:
    """Delete a snapshot and its files (sandboxes started from it keep theirs). Prints nothing
    (--json: the id deleted)."""
    if not _call(conn, lambda snapshots: snapshots.delete(snapshot_id)):
        raise CliError(f"snapshot {snapshot_id!r} not found (it may have been deleted)")
    if as_json:
        echo_json({"id": snapshot_id, "deleted": True})


def format_table(snapshots: Sequence[SandboxSnapshotInfo]) -> str:
    header = ("ID", "NAME", "SANDBOX", "TEMPLATE", "CREATED")
    return render_table(header, [_row(info) for info in snapshots])


def _row(info: SandboxSnapshotInfo) -> tuple[str, ...]:
    created = info.created_at.isoformat(timespec="seconds")
    return (info.id, info.name or "-", info.sandbox_id, info.template, created)
