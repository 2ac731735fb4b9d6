"""`agentcell sandbox …`: create, ls, get, kill, timeout, pause, resume, snapshot, fork."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal, cast

import click

from agentcell.cli.context import CliError, Connection, parse_pairs, pass_connection, validate_options
from agentcell.cli.durations import duration_argument, duration_option
from agentcell.cli.output import echo_json, json_always_option, json_option
from agentcell.cli.table import render_table
from agentcell.client import AgentcellAPIError, Sandbox, SandboxInfo
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.sandboxes import (
    MAX_FORKS,
    MAX_TIMEOUT_S,
    MIN_DISK_MB,
    MIN_MEMORY_MB,
    PortsAccess,
    SandboxState,
)

metadata_option = click.option(
    "--metadata", "metadata", multiple=True, callback=parse_pairs, metavar="K=V", help="Repeatable."
)


@click.group("sandbox")
def sandbox_group() -> None:
    """Create, list, inspect and end sandboxes."""


DENY_HELP = "Repeatable: an IP or CIDR (optional :port) the open internet excludes; implies --egress open."


@sandbox_group.command("create")
@click.option("--template", default=None, help="Template name (server default: base).")
@click.option(
    "--snapshot",
    default=None,
    metavar="SNAPSHOT_ID",
    help="Start from a snapshot (`agentcell sandbox snapshot`): its template, resources, env and "
    "files; other options given replace the snapshot's. Not with --template.",
)
@click.option("--env", "env", multiple=True, callback=parse_pairs, metavar="K=V", help="Repeatable.")
@metadata_option
@click.option(
    "--cpu", type=click.FloatRange(min=0, min_open=True), default=None, help="CPU cores (fractions allowed)."
)
@click.option("--memory-mb", type=click.IntRange(min=MIN_MEMORY_MB), default=None)
@click.option("--disk-mb", type=click.IntRange(min=MIN_DISK_MB), default=None)
@duration_option(
    "--timeout", "timeout_s", max_s=MAX_TIMEOUT_S, help="Until the sandbox ends: 600, 10m, 2h (default 5m)."
)
@click.option(
    "--on-timeout",
    type=click.Choice(["kill", "pause"]),
    default=None,
    help="At the timeout: end the sandbox (default) or pause it (its /home/user kept).",
)
@click.option(
    "--auto-resume",
    is_flag=True,
    default=None,
    help="With --on-timeout pause: resume the paused sandbox when work reaches it (a command, "
    "code, files, a request to its ports).",
)
@click.option(
    "--egress",
    type=click.Choice(["none", "allowlist", "open"]),
    default=None,
    help="Network egress (server default: none). --allow implies allowlist.",
)
@click.option(
    "--allow",
    multiple=True,
    metavar="DEST",
    help="Repeatable: host, *.domain, IP or CIDR, each with an optional :port.",
)
@click.option("--deny", multiple=True, metavar="ADDR", help=DENY_HELP)
@click.option(
    "--ports",
    type=click.Choice(["public", "private"]),
    default=None,
    help="Who reaches its ports' {port}-{id}.{domain} hosts: anyone (default), or only requests "
    "with its traffic token (printed on stderr; --json: traffic_token) in the "
    "e2b-traffic-access-token header.",
)
@click.option(
    "--ports-host",
    default=None,
    metavar="HOST",
    help="The Host header requests to its ports arrive with, e.g. 'localhost:${PORT}' (dev servers).",
)
@json_option
@pass_connection
def create(
    conn: Connection,
    template: str | None,
    snapshot: str | None,
    env: dict[str, str],
    metadata: dict[str, str],
    cpu: float | None,
    memory_mb: int | None,
    disk_mb: int | None,
    timeout_s: int | None,
    on_timeout: str | None,
    auto_resume: bool | None,
    egress: str | None,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    ports: str | None,
    ports_host: str | None,
    as_json: bool,
) -> None:
    """Start a sandbox and print its id (--json: its details)."""
    if template is not None and snapshot is not None:
        raise click.UsageError(
            "give --template or --snapshot, not both: a sandbox from a snapshot runs the snapshot's template"
        )
    network = _network(egress, allow, deny)
    sandbox = Sandbox.create(
        template,
        env=env,
        metadata=metadata,
        cpu=cpu,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        timeout_s=timeout_s,
        on_timeout=cast(Literal["kill", "pause"] | None, on_timeout),
        auto_resume=auto_resume,
        network=network,
        ports=cast(PortsAccess | None, ports),
        ports_host=ports_host,
        snapshot=snapshot,
        api_url=conn.api_url,
        api_key=conn.api_key,
    )
    sandbox.close()
    if as_json:
        echo_json(sandbox.info)
        return
    click.echo(sandbox.id)
    if sandbox.info.traffic_token is not None:  # stdout stays the id alone, for scripts
        click.echo(f"traffic token: {sandbox.info.traffic_token}", err=True)


def _network(egress: str | None, allow: tuple[str, ...], deny: tuple[str, ...]) -> NetworkPolicy | None:
    """The egress policy of --egress, --allow (which implies allowlist) and --deny (which implies
    open), checked here so that a bad entry is a usage error."""
    if egress is None and not allow and not deny:
        return None
    fields = {"egress": egress or ("open" if deny else "allowlist"), "allow": list(allow), "deny": list(deny)}
    return validate_options(NetworkPolicy, fields, "--egress", "--allow", "--deny")


@sandbox_group.command("ls")
@metadata_option
@click.option("--state", type=click.Choice(["running", "stopping", "ended", "paused"]), default=None)
@json_option
@pass_connection
def list_sandboxes(conn: Connection, metadata: dict[str, str], state: str | None, as_json: bool) -> None:
    """List all sandboxes, oldest first (those whose metadata matches every --metadata K=V)."""
    wanted = cast(SandboxState | None, state)
    found = Sandbox.list(metadata=metadata, state=wanted, api_url=conn.api_url, api_key=conn.api_key)
    if as_json:
        echo_json(found)
    else:
        click.echo(format_table(found))


@sandbox_group.command("get")
@click.argument("sandbox_id")
@json_always_option
@pass_connection
def get(conn: Connection, sandbox_id: str) -> None:
    """Print a sandbox's details as JSON."""
    with conn.sandbox(sandbox_id) as sandbox:
        echo_json(sandbox.info)


@sandbox_group.command("kill")
@click.argument("sandbox_id")
@pass_connection
def kill(conn: Connection, sandbox_id: str) -> None:
    """End a sandbox now."""
    with conn.sandbox(sandbox_id) as sandbox:
        sandbox.kill()


# ignore_unknown_options: `-5` reaches the duration parser (which says it is negative) instead of
# being an unknown option
@sandbox_group.command("timeout", context_settings={"ignore_unknown_options": True})
@click.argument("sandbox_id")
@duration_argument("timeout_s", max_s=MAX_TIMEOUT_S)
@json_option
@pass_connection
def set_timeout(conn: Connection, sandbox_id: str, timeout_s: int, as_json: bool) -> None:
    """End the sandbox DURATION from now (900, 15m, 2h); prints the new end time."""
    with conn.sandbox(sandbox_id) as sandbox:
        info = sandbox.set_timeout(timeout_s)
    _echo_end_time(info, as_json)


@sandbox_group.command("network")
@click.argument("sandbox_id")
@click.option(
    "--egress",
    type=click.Choice(["none", "allowlist", "open"]),
    default=None,
    help="The new egress policy. --allow implies allowlist.",
)
@click.option("--allow", multiple=True, metavar="DEST", help="Repeatable: host, *.domain, IP or CIDR[:port].")
@click.option("--deny", multiple=True, metavar="ADDR", help=DENY_HELP)
@json_option
@pass_connection
def set_network(
    conn: Connection,
    sandbox_id: str,
    egress: str | None,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    as_json: bool,
) -> None:
    """Replace a running sandbox's egress policy now (connections it no longer allows are cut);
    prints nothing (--json: its details)."""
    network = _network(egress, allow, deny)
    if network is None:
        raise click.UsageError(
            "give the new policy: --egress none|open, --allow DEST or --deny ADDR (repeatable)"
        )
    with conn.sandbox(sandbox_id) as sandbox:
        info = sandbox.update_network(network)
    if as_json:
        echo_json(info)


@sandbox_group.command("pause")
@click.argument("sandbox_id")
@json_option
@pass_connection
def pause(conn: Connection, sandbox_id: str, as_json: bool) -> None:
    """Save the sandbox's /home/user and stop it (its processes end); `resume` starts it again.
    Prints nothing (--json: its details)."""
    with conn.sandbox(sandbox_id) as sandbox:
        info = sandbox.pause()
    if as_json:
        echo_json(info)


@sandbox_group.command("resume")
@click.argument("sandbox_id")
@duration_option(
    "--timeout", "timeout_s", max_s=MAX_TIMEOUT_S, help="Until it ends, e.g. 10m (default: as created)."
)
@json_option
@pass_connection
def resume(conn: Connection, sandbox_id: str, timeout_s: int | None, as_json: bool) -> None:
    """Start a paused sandbox again, same id, its files restored; prints its new end time."""
    sandbox = Sandbox.resume(sandbox_id, timeout_s=timeout_s, api_url=conn.api_url, api_key=conn.api_key)
    sandbox.close()
    _echo_end_time(sandbox.info, as_json)


@sandbox_group.command("snapshot")
@click.argument("sandbox_id")
@click.option("--name", default=None, help="A name for it; a snapshot of this name gets the new files.")
@json_option
@pass_connection
def snapshot(conn: Connection, sandbox_id: str, name: str | None, as_json: bool) -> None:
    """Keep a running sandbox's /home/user as a snapshot (it keeps running); prints its id
    (--json: its details). Start sandboxes from it with `create --snapshot ID`."""
    with conn.sandbox(sandbox_id) as sandbox:
        info = sandbox.create_snapshot(name)
    if as_json:
        echo_json(info)
    else:
        click.echo(info.id)


@sandbox_group.command("fork")
@click.argument("sandbox_id")
@click.option(
    "--count", type=click.IntRange(1, MAX_FORKS), default=1, show_default=True, help="Sandboxes to start."
)
@duration_option("--timeout", "timeout_s", max_s=MAX_TIMEOUT_S, help="Their timeout (default: the source's).")
@json_option
@pass_connection
def fork(conn: Connection, sandbox_id: str, count: int, timeout_s: int | None, as_json: bool) -> None:
    """Start COUNT sandboxes with a running sandbox's settings and files as of now (it keeps
    running); prints their ids, one a line (--json: each fork's sandbox or error). A fork that
    did not start is reported on stderr and the exit status is 1; the others keep running."""
    with conn.sandbox(sandbox_id) as sandbox:
        forks = sandbox.fork(count, timeout_s=timeout_s)
    for one in forks:
        if not isinstance(one, AgentcellAPIError):
            one.close()  # they run on: closed, not killed
    failed = [one for one in forks if isinstance(one, AgentcellAPIError)]
    if as_json:
        echo_json([_fork_document(one) for one in forks])
    else:
        for one in forks:
            if not isinstance(one, AgentcellAPIError):
                click.echo(one.id)
    if failed:
        raise CliError(
            f"{len(failed)} of {count} forks did not start: " + "; ".join(e.message for e in failed)
        )


def _fork_document(fork: Sandbox | AgentcellAPIError) -> dict[str, object]:
    if isinstance(fork, AgentcellAPIError):
        return {"error": {"code": fork.code, "message": fork.message, "request_id": fork.request_id}}
    return {"sandbox": fork.info}


def _echo_end_time(info: SandboxInfo, as_json: bool) -> None:
    if as_json:
        echo_json(info)
    else:
        click.echo(info.expires_at.isoformat())


def format_table(sandboxes: Sequence[SandboxInfo]) -> str:
    header = ("ID", "TEMPLATE", "STATE", "CPU", "MEMORY", "ENDS IN", "METADATA")
    return render_table(header, [_row(info) for info in sandboxes])


def _row(info: SandboxInfo) -> tuple[str, ...]:
    metadata = ",".join(f"{k}={v}" for k, v in sorted(info.metadata.items()))
    return (
        info.id,
        info.template,
        info.state,
        f"{info.cpu:g}",
        f"{info.memory_mb} MiB",
        _ends_in(info),
        metadata,
    )


def _ends_in(info: SandboxInfo) -> str:
    expires_at = info.expires_at if info.expires_at.tzinfo else info.expires_at.replace(tzinfo=UTC)
    seconds = int((expires_at - datetime.now(UTC)).total_seconds())
    if seconds <= 0:
        return "-"
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )
