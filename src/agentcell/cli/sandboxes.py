"""`agentcell sandbox …`: create, ls, get, kill, timeout, pause, resume."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal, cast

import click

from agentcell.cli.context import Connection, parse_pairs, pass_connection
from agentcell.client import Sandbox, SandboxInfo
from agentcell.protocol.sandboxes import SandboxState

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
metadata_option = click.option(
    "--metadata", "metadata", multiple=True, callback=parse_pairs, metavar="K=V", help="Repeatable."
)


@click.group("sandbox")
def sandbox_group() -> None:
    """Create, list, inspect and end sandboxes."""


@sandbox_group.command("create")
@click.option("--template", default=None, help="Template name (server default: base).")
@click.option("--env", "env", multiple=True, callback=parse_pairs, metavar="K=V", help="Repeatable.")
@metadata_option
@click.option("--cpu", type=float, default=None, help="CPU cores (fractions allowed).")
@click.option("--memory-mb", type=int, default=None)
@click.option("--disk-mb", type=int, default=None)
@click.option("--timeout", "timeout_s", type=int, default=None, help="Seconds until the sandbox ends.")
@click.option(
    "--on-timeout",
    type=click.Choice(["kill", "pause"]),
    default=None,
    help="At the timeout: end the sandbox (default) or pause it (its /home/user kept).",
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
@json_option
@pass_connection
def create(
    conn: Connection,
    template: str | None,
    env: dict[str, str],
    metadata: dict[str, str],
    cpu: float | None,
    memory_mb: int | None,
    disk_mb: int | None,
    timeout_s: int | None,
    on_timeout: str | None,
    egress: str | None,
    allow: tuple[str, ...],
    as_json: bool,
) -> None:
    """Start a sandbox and print its id."""
    network = {"egress": egress or "allowlist", "allow": list(allow)} if allow else egress
    sandbox = Sandbox.create(
        template,
        env=env,
        metadata=metadata,
        cpu=cpu,
        memory_mb=memory_mb,
        disk_mb=disk_mb,
        timeout_s=timeout_s,
        on_timeout=cast(Literal["kill", "pause"] | None, on_timeout),
        network=network,
        api_url=conn.api_url,
        api_key=conn.api_key,
    )
    sandbox.close()
    click.echo(sandbox.info.model_dump_json(indent=2) if as_json else sandbox.id)


@sandbox_group.command("ls")
@metadata_option
@click.option("--state", type=click.Choice(["running", "stopping", "ended", "paused"]), default=None)
@json_option
@pass_connection
def list_sandboxes(conn: Connection, metadata: dict[str, str], state: str | None, as_json: bool) -> None:
    """List sandboxes (those whose metadata matches every --metadata K=V)."""
    wanted = cast(SandboxState | None, state)
    found = Sandbox.list(metadata=metadata, state=wanted, api_url=conn.api_url, api_key=conn.api_key)
    if as_json:
        click.echo("[" + ",".join(info.model_dump_json() for info in found) + "]")
    else:
        click.echo(format_table(found))


@sandbox_group.command("get")
@click.argument("sandbox_id")
@pass_connection
def get(conn: Connection, sandbox_id: str) -> None:
    """Print a sandbox's details as JSON."""
    with conn.sandbox(sandbox_id) as sandbox:
        click.echo(sandbox.info.model_dump_json(indent=2))


@sandbox_group.command("kill")
@click.argument("sandbox_id")
@pass_connection
def kill(conn: Connection, sandbox_id: str) -> None:
    """End a sandbox now."""
    with conn.sandbox(sandbox_id) as sandbox:
        sandbox.kill()


@sandbox_group.command("timeout")
@click.argument("sandbox_id")
@click.argument("seconds", type=click.IntRange(min=1))
@json_option
@pass_connection
def set_timeout(conn: Connection, sandbox_id: str, seconds: int, as_json: bool) -> None:
    """End the sandbox SECONDS from now; prints the new end time."""
    with conn.sandbox(sandbox_id) as sandbox:
        info = sandbox.set_timeout(seconds)
    click.echo(info.model_dump_json(indent=2) if as_json else info.expires_at.isoformat())


@sandbox_group.command("pause")
@click.argument("sandbox_id")
@pass_connection
def pause(conn: Connection, sandbox_id: str) -> None:
    """Save the sandbox's /home/user and stop it (its processes end); `resume` starts it again."""
    with conn.sandbox(sandbox_id) as sandbox:
        sandbox.pause()


@sandbox_group.command("resume")
@click.argument("sandbox_id")
@click.option(
    "--timeout", "timeout_s", type=int, default=None, help="Seconds until it ends (default: as created)."
)
@json_option
@pass_connection
def resume(conn: Connection, sandbox_id: str, timeout_s: int | None, as_json: bool) -> None:
    """Start a paused sandbox again, same id, its files restored; prints its new end time."""
    sandbox = Sandbox.resume(sandbox_id, timeout_s=timeout_s, api_url=conn.api_url, api_key=conn.api_key)
    sandbox.close()
    click.echo(sandbox.info.model_dump_json(indent=2) if as_json else sandbox.info.expires_at.isoformat())


def format_table(sandboxes: Sequence[SandboxInfo]) -> str:
    header = ("ID", "TEMPLATE", "STATE", "CPU", "MEMORY", "ENDS IN", "METADATA")
    rows = [header] + [_row(info) for info in sandboxes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip()
        for row in rows
    )


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
