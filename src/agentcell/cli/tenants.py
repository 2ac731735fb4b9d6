"""`agentcell tenant …` and `agentcell key …` (admin keys only).

agentcell tenant create acme --max-sessions 500 --max-memory 64GiB --max-storage 100GiB \
    --max-functions 20 --max-code 2GiB
agentcell key create acme --scope sandboxes:write,sessions:write     # the key is printed once
"""

from __future__ import annotations

import re
from typing import Any

import click
from pydantic import ValidationError

from agentcell.cli.context import Connection, pass_connection
from agentcell.cli.output import echo_json, json_always_option, json_option
from agentcell.cli.table import render_table
from agentcell.client import TenantQuotas

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(MiB|MB|M|GiB|GB|G|TiB|TB|T)?\s*$", re.IGNORECASE)
MIB_PER_UNIT = {
    "m": 1,
    "mb": 1,
    "mib": 1,
    "g": 1024,
    "gb": 1024,
    "gib": 1024,
    "t": 1 << 20,
    "tb": 1 << 20,
    "tib": 1 << 20,
}


def parse_mib(_: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """64GiB, 512M, 2048 (MiB) → MiB."""
    if value is None:
        return None
    found = SIZE.match(value)
    if found is None:
        raise click.BadParameter(f"{value!r} is not a size: write e.g. 512MiB, 64GiB or 2048", param=param)
    return int(float(found.group(1)) * MIB_PER_UNIT[(found.group(2) or "m").lower()])


def quota_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--max-sessions", type=click.IntRange(min=0), default=None),
            click.option("--max-instances", type=click.IntRange(min=0), default=None),
            click.option("--max-sandboxes", type=click.IntRange(min=0), default=None),
            click.option("--max-cpu", type=click.FloatRange(min=0), default=None, help="Cores."),
            click.option("--max-memory", callback=parse_mib, default=None, help="e.g. 64GiB"),
            click.option("--max-storage", callback=parse_mib, default=None, help="e.g. 100GiB"),
            click.option("--max-functions", type=click.IntRange(min=0), default=None),
            click.option(
                "--max-code", callback=parse_mib, default=None, help="Function code on disk, e.g. 2GiB."
            ),
            click.option("--max-rps", type=click.FloatRange(min=0, min_open=True), default=None),
        ]
    ):
        command = option(command)
    return command


def _quotas(options: dict[str, Any]) -> TenantQuotas:
    try:
        return TenantQuotas(
            max_sessions=options["max_sessions"],
            max_instances=options["max_instances"],
            max_sandboxes=options["max_sandboxes"],
            max_cpu=options["max_cpu"],
            max_memory_mb=options["max_memory"],
            max_storage_mb=options["max_storage"],
            max_functions=options["max_functions"],
            max_code_mb=options["max_code"],
            max_rps=options["max_rps"],
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        option = "--" + field.removesuffix("_mb").replace("_", "-")
        raise click.BadParameter(str(first["msg"]), param_hint=f"'{option}'") from None


@click.group("tenant")
def tenant_group() -> None:
    """Create, list and delete tenants and set their quotas (admin key)."""


@tenant_group.command("create")
@click.argument("name")
@quota_options
@json_always_option
@pass_connection
def create_tenant(conn: Connection, /, name: str, **options: Any) -> None:
    """Create tenant NAME with its quotas (unset: unlimited); prints it as JSON."""
    with conn.agentcell() as client:
        echo_json(client.tenants.create(name, _quotas(options)))


@tenant_group.command("set")
@click.argument("name")
@quota_options
@json_always_option
@pass_connection
def set_quotas(conn: Connection, /, name: str, **options: Any) -> None:
    """Replace tenant NAME's quotas (unset: unlimited); prints the tenant as JSON."""
    with conn.agentcell() as client:
        echo_json(client.tenants.set_quotas(name, _quotas(options)))


@tenant_group.command("ls")
@json_option
@pass_connection
def list_tenants(conn: Connection, as_json: bool) -> None:
    """List tenants and their quotas."""
    with conn.agentcell() as client:
        tenants = client.tenants.list()
    if as_json:
        echo_json(tenants)
        return
    rows = [
        (t.name, ", ".join(f"{k}={v}" for k, v in t.quotas.model_dump().items() if v is not None) or "-")
        for t in tenants
    ]
    click.echo(render_table(("NAME", "QUOTAS"), rows))


@tenant_group.command("rm")
@click.argument("name")
@pass_connection
def remove_tenant(conn: Connection, name: str) -> None:
    """Delete tenant NAME and its keys."""
    with conn.agentcell() as client:
        client.tenants.delete(name)


@click.group("key")
def key_group() -> None:
    """Create, list and revoke API keys (admin key)."""


@key_group.command("create")
@click.argument("tenant")
@click.option(
    "--scope", "scopes", default="*", help="Comma-separated, e.g. sandboxes:write,invoke (default *)."
)
@click.option("--name", default="", help="A note to tell keys apart.")
@json_option
@pass_connection
def create_key(conn: Connection, tenant: str, scopes: str, name: str, as_json: bool) -> None:
    """Make a key for TENANT and print it (only this once; it is stored hashed; --json: the key
    with its id and scopes)."""
    with conn.agentcell() as client:
        created = client.tenants.create_key(tenant, [s.strip() for s in scopes.split(",") if s.strip()], name)
    if as_json:
        echo_json(created)
        return
    click.echo(created.key)
    click.echo(f"id {created.id}, scopes {' '.join(created.scopes)}", err=True)


@key_group.command("ls")
@click.argument("tenant")
@json_option
@pass_connection
def list_keys(conn: Connection, tenant: str, as_json: bool) -> None:
    """List TENANT's keys (never the keys themselves), revoked ones too."""
    with conn.agentcell() as client:
        keys = client.tenants.keys(tenant)
    if as_json:
        echo_json(keys)
        return
    rows = [(k.id, " ".join(k.scopes), k.name, "revoked" if k.revoked_at else "active") for k in keys]
    click.echo(render_table(("ID", "SCOPES", "NAME", "STATE"), rows))


@key_group.command("revoke")
@click.argument("key_id")
@json_option
@pass_connection
def revoke_key(conn: Connection, key_id: str, as_json: bool) -> None:
    """Revoke a key by id: it stops working at once. Prints nothing (--json: the revoked key)."""
    with conn.agentcell() as client:
        revoked = client.tenants.revoke_key(key_id)
    if as_json:
        echo_json(revoked)
