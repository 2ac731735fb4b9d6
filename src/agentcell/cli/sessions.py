"""`agentcell session …`: create (pre-warm), ls, get, renew, snapshot, rm; `agentcell workspace …`.

agentcell session create chat --key alice-1 --ttl 1h     # bound to an instance now
agentcell session renew ses_… --idle-timeout 2h
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

import click

from agentcell.cli.context import CliError, Connection, parse_pairs, pass_connection
from agentcell.cli.durations import duration_option, format_duration
from agentcell.cli.output import echo_json, json_always_option, json_option
from agentcell.cli.table import render_table
from agentcell.client import SessionInfo, WorkspaceInfo
from agentcell.protocol.sessions import SessionState

metadata_option = click.option(
    "--metadata", "metadata", multiple=True, callback=parse_pairs, metavar="K=V", help="Repeatable."
)
LIVE_STATES = ["pending", "restoring", "active", "idle"]


@click.group("session")
def session_group() -> None:
    """Create (pre-warm), list, renew and end sessions of functions."""


@session_group.command("create")
@click.argument("function")
@click.option("--key", default=None, help="The key clients will send (default: the new session id).")
@duration_option("--ttl", "ttl_s", help="Lifetime, e.g. 1h (default: the function's session TTL).")
@duration_option("--idle-timeout", "idle_timeout_s", help="e.g. 15m (default: the function's).")
@metadata_option
@click.option("--workspace", default=None, help="A named workspace of the tenant to use.")
@json_option
@pass_connection
def create(
    conn: Connection,
    function: str,
    key: str | None,
    ttl_s: int | None,
    idle_timeout_s: int | None,
    metadata: dict[str, str],
    workspace: str | None,
    as_json: bool,
) -> None:
    """Open a session on FUNCTION, bound to an instance before its first request; prints its id
    (`id=$(agentcell session create chat)`; its key is --key, or the id when none is given; --json
    prints everything). Durations: 90, 90s, 15m, 6h, 2d, 1h30m."""
    with conn.agentcell() as client:
        info = client.sessions.create(
            function,
            key,
            ttl_s=ttl_s,
            idle_timeout_s=idle_timeout_s,
            metadata=metadata or None,
            workspace=workspace,
        )
    if as_json:
        echo_json(info)
    else:
        click.echo(info.id)


@session_group.command("ls")
@click.argument("function", required=False)
@click.option(
    "--state",
    type=click.Choice([*LIVE_STATES, "ended"]),
    default=None,
    callback=lambda _ctx, _param, value: _live_state(value),
    help="Only sessions in this state (ended ones are not listed: `session get ID` shows one).",
)
@metadata_option
@json_option
@pass_connection
def list_sessions(
    conn: Connection, function: str | None, state: str | None, metadata: dict[str, str], as_json: bool
) -> None:
    """List live sessions (of FUNCTION when given; with every --metadata K=V)."""
    wanted = cast(SessionState | None, state)
    with conn.agentcell() as client:
        found = client.sessions.list(function, state=wanted, metadata=metadata)
    if as_json:
        echo_json(found)
    else:
        click.echo(format_sessions(found))


def _live_state(state: str | None) -> str | None:
    if state == "ended":
        raise click.BadParameter(
            "ended sessions are not listed; `agentcell session get ID` shows one with its end reason"
        )
    return state


@session_group.command("get")
@click.argument("session_id")
@json_always_option
@pass_connection
def get(conn: Connection, session_id: str) -> None:
    """Print a session's details as JSON (an ended one with its end_reason)."""
    with conn.agentcell() as client:
        echo_json(client.sessions.get(session_id))


@session_group.command("renew")
@click.argument("session_id")
@duration_option("--ttl", "ttl_s", help="New lifetime counted from now, e.g. 1h.")
@duration_option("--idle-timeout", "idle_timeout_s", help="New idle timeout, e.g. 2h.")
@json_option
@pass_connection
def renew(
    conn: Connection, session_id: str, ttl_s: int | None, idle_timeout_s: int | None, as_json: bool
) -> None:
    """Set new limits counted from now (longer or shorter); the session keeps its instance."""
    if ttl_s is None and idle_timeout_s is None:
        raise click.UsageError("give --ttl, --idle-timeout or both, e.g. --idle-timeout 2h")
    with conn.agentcell() as client:
        info = client.sessions.renew(session_id, ttl_s=ttl_s, idle_timeout_s=idle_timeout_s)
    if as_json:
        echo_json(info)
    else:
        click.echo(format_sessions([info]))


@session_group.command("snapshot")
@click.argument("session_id")
@json_always_option
@pass_connection
def snapshot(conn: Connection, session_id: str) -> None:
    """Save the session's workspace to object storage now; prints the snapshot as JSON."""
    with conn.agentcell() as client:
        echo_json(client.sessions.snapshot(session_id))


@session_group.command("rm")
@click.argument("session_id")
@pass_connection
def remove(conn: Connection, session_id: str) -> None:
    """End a session now: its pre-stop hook runs, then its instance is released."""
    with conn.agentcell() as client:
        if not client.sessions.delete(session_id):
            raise CliError(f"session {session_id!r} not found or already ended")


@click.group("workspace")
def workspace_group() -> None:
    """List and delete stored session workspaces."""


@workspace_group.command("ls")
@json_option
@pass_connection
def list_workspaces(conn: Connection, as_json: bool) -> None:
    """Stored workspaces with their size, last snapshot and the session using them."""
    with conn.agentcell() as client:
        listing = client.workspaces.list()
    if as_json:
        echo_json(listing)
        return
    rows = [
        (
            w.storage_path,
            str(w.stored_bytes),
            str(w.last_snapshot.seq) if w.last_snapshot else "-",
            _user(w),
            w.error or "",
        )
        for w in listing.workspaces
    ]
    click.echo(render_table(("PATH", "BYTES", "SNAPSHOT", "USED BY", "ERROR"), rows))
    quota = "unlimited" if listing.quota_bytes is None else f"{listing.quota_bytes} bytes"
    click.echo(f"tenant {listing.tenant}: {listing.stored_bytes} bytes stored, quota {quota}")


def _user(workspace: WorkspaceInfo) -> str:
    """What holds the workspace: a live session (its id), a paused sandbox or a sandbox snapshot."""
    if workspace.snapshot_id is not None:
        return f"snapshot {workspace.snapshot_id}"
    if workspace.sandbox_id is not None:
        return f"paused sandbox {workspace.sandbox_id}"
    return workspace.session_id or "-"


@workspace_group.command("rm")
@click.argument("storage_path")
@pass_connection
def remove_workspace(conn: Connection, storage_path: str) -> None:
    """Delete every snapshot of a stored workspace (refused while a session uses it)."""
    with conn.agentcell() as client:
        if not client.workspaces.delete(storage_path):
            raise CliError(f"workspace {storage_path!r} not found")


def format_sessions(sessions: Sequence[SessionInfo]) -> str:
    header = ("ID", "KEY", "FUNCTION", "STATE", "INSTANCE", "ENDS IN", "IDLE ENDS IN", "METADATA")
    return render_table(header, [_row(info) for info in sessions])


def _row(info: SessionInfo) -> tuple[str, ...]:
    now = datetime.now(UTC)
    state = f"{info.state} ({info.end_reason})" if info.end_reason else info.state
    return (
        info.id,
        info.key,
        f"{info.function} v{info.version}",
        state,
        info.instance_id or "-",
        format_duration((_aware(info.expires_at) - now).total_seconds()),
        format_duration((_aware(info.idle_expires_at) - now).total_seconds()),
        ",".join(f"{k}={v}" for k, v in sorted(info.metadata.items())),
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
