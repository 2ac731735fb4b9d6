"""`agentcell usage [TENANT]`: metered usage and cost, as a table, JSON or CSV.

agentcell usage acme --since 2026-11-01 --by session --format csv
agentcell usage --json                  # the same as --format json
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

import click

from agentcell.cli.context import Connection, pass_connection
from agentcell.cli.output import echo_json, json_option
from agentcell.cli.table import render_table
from agentcell.client import UsageReport
from agentcell.protocol.usage import UsageGrouping

GROUPINGS = ["tenant", "function", "session", "sandbox", "kind"]
DATES = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]


@click.command("usage")
@click.argument("tenant", required=False)
@click.option("--since", type=click.DateTime(DATES), default=None, help="Start (default: a day ago).")
@click.option("--until", type=click.DateTime(DATES), default=None, help="End (default: now).")
@click.option("--by", type=click.Choice(GROUPINGS), default="session", show_default=True)
@click.option(
    "--format", "output", type=click.Choice(["table", "json", "csv"]), default=None, help="Default table."
)
@json_option
@pass_connection
def usage(
    conn: Connection,
    tenant: str | None,
    since: datetime | None,
    until: datetime | None,
    by: str,
    output: str | None,
    as_json: bool,
) -> None:
    """Active and idle seconds, CPU seconds, memory GiB-seconds, stored GiB-hours and cost, of
    the key's tenant (or TENANT, or * for all, with an admin key). Times without a zone are UTC."""
    if as_json and output not in (None, "json"):
        raise click.UsageError(f"--json is --format json: give it or --format {output}, not both")
    output = "json" if as_json else output or "table"
    grouping = cast(UsageGrouping, by)
    with conn.agentcell() as client:
        if output == "csv":
            click.echo(client.usage.csv(since=since, until=until, by=grouping, tenant=tenant), nl=False)
            return
        report = client.usage.get(since=since, until=until, by=grouping, tenant=tenant)
    if output == "json":
        echo_json(report)
    else:
        click.echo(format_report(report))


def format_report(report: UsageReport) -> str:
    header = ("GROUP", "ACTIVE S", "IDLE S", "CPU S", "MEM GIB·S", "STORAGE GIB·H", "COST")
    rows = [
        (
            "/".join(
                part
                for part in (line.tenant, line.function, line.session_key, line.sandbox_id, line.kind)
                if part
            ),
            f"{line.active_s:.1f}",
            f"{line.idle_s:.1f}",
            f"{line.cpu_s:.2f}",
            f"{line.memory_gib_s:.1f}",
            f"{line.storage_gib_h:.4f}",
            f"{line.cost:.6f}",
        )
        for line in [*report.lines, report.total]
    ]
    return render_table(header, rows)
