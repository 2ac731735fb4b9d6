"""`agentcell fn …`: deploy, ls, get, rm.

    agentcell fn deploy ./my-agent --name chat --cmd "python3 app.py" \\
        --affinity header --sessions-per-instance 1 --session-ttl 6h --idle-timeout 15m --min-warm 2
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import click

from agentcell.cli.context import CliError, Connection, parse_pairs, pass_connection, validate_options
from agentcell.cli.durations import duration_option
from agentcell.cli.output import echo_json, json_always_option, json_option
from agentcell.cli.progress import Progress
from agentcell.cli.table import render_table
from agentcell.client import FunctionInfo, Hook, HookSpec, WorkspaceConfig
from agentcell.protocol.sandboxes import MIN_DISK_MB, MIN_MEMORY_MB

POSITIVE = click.IntRange(min=1)


@click.group("fn")
def function_group() -> None:
    """Deploy, list, inspect and delete functions (served at /fn/NAME/)."""


@function_group.command("deploy")
@click.argument("code", type=click.Path(exists=True, readable=True), required=False)
@click.option("--name", required=True, help="Function name: lowercase letters, digits, '-'.")
@click.option(
    "--from-sandbox",
    "sandbox_id",
    default=None,
    metavar="SANDBOX_ID",
    help="Instead of CODE: publish a directory of this running sandbox (--sandbox-path).",
)
@click.option(
    "--sandbox-path", default=None, metavar="PATH", help="With --from-sandbox: the directory (/home/user)."
)
@click.option(
    "--packages/--no-packages",
    default=True,
    help="With --from-sandbox: carry ~/.local (run-time installs) along (default: yes).",
)
@click.option("--cmd", default=None, help="Serves HTTP on $PORT; run by bash in /code.")
@click.option("--stdio", default=None, help="Instead of --cmd: a stdio MCP server, bridged to HTTP.")
@click.option(
    "--stdio-process",
    type=click.Choice(["session", "shared"]),
    default=None,
    help="With --stdio: a server process per MCP session (default), or one shared per instance.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="$PORT (default 8080).")
@click.option("--template", default=None, help="What instances start from (default base); see `template ls`.")
@click.option("--env", "env", multiple=True, callback=parse_pairs, metavar="K=V", help="Repeatable.")
@click.option("--metadata", multiple=True, callback=parse_pairs, metavar="K=V", help="Repeatable.")
@click.option("--cpu", type=click.FloatRange(min=0, min_open=True), default=None, help="CPU cores.")
@click.option("--memory-mb", type=click.IntRange(min=MIN_MEMORY_MB), default=None)
@click.option("--disk-mb", type=click.IntRange(min=MIN_DISK_MB), default=None)
@click.option(
    "--affinity",
    type=click.Choice(["header", "cookie", "mcp", "none"]),
    default=None,
    help="How requests find their session (default header).",
)
@click.option(
    "--session-header", default=None, help="Header carrying the key (default x-agentcell-session-id)."
)
@click.option("--cookie-name", default=None, help="Cookie carrying the key (--affinity cookie).")
@click.option("--sessions-per-instance", type=POSITIVE, default=None, help="1 (default): exclusive.")
@duration_option("--session-ttl", "session_ttl_s", help="Session lifetime (default 6h).")
@duration_option("--idle-timeout", "idle_timeout_s", help="Session ends idle this long (default 15m).")
@click.option("--disable-session-id-reuse", is_flag=True, default=None, help="Refuse ended keys.")
@click.option("--min-warm", type=click.IntRange(min=0), default=None, help="Idle instances kept ready.")
@click.option("--max-instances", type=POSITIVE, default=None)
@click.option("--concurrency", type=POSITIVE, default=None, help="Concurrent requests per instance.")
@click.option("--init-hook", default=None, metavar="CMD", help="Run in each new instance before traffic.")
@duration_option("--init-timeout", help="Deadline of --init-hook (default 30s).")
@click.option("--pre-stop-hook", default=None, metavar="CMD", help="Run before an instance stops.")
@duration_option("--pre-stop-timeout", help="Deadline of --pre-stop-hook (default 30s).")
@duration_option("--ready-timeout", help="Time allowed to listen on $PORT (default 30s).")
@duration_option("--request-timeout", help="Per request through the gateway (default 5m).")
@click.option("--persist", is_flag=True, default=None, help="Keep session workspaces in object storage.")
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Not persisted (repeatable; default node_modules, .venv, …).",
)
@click.option("--keep-snapshots", type=POSITIVE, default=None, help="Snapshots kept per workspace (3).")
@duration_option(
    "--sync-interval", help="Periodic snapshot of live sessions (default 3m; 0: off).", zero_means="off"
)
@click.option("--restore-hook", default=None, metavar="CMD", help="Run after a workspace is restored.")
@duration_option("--restore-timeout", help="Deadline of --restore-hook (default 30s).")
@json_option
@pass_connection
def deploy(
    conn: Connection,
    /,
    code: str | None,
    name: str,
    sandbox_id: str | None,
    sandbox_path: str | None,
    packages: bool,
    cmd: str | None,
    stdio: str | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Deploy CODE (a directory, or a .tar / .tar.gz of one) as a new version of function NAME,
    or publish a directory of a sandbox (--from-sandbox). Give --cmd (an HTTP server on $PORT) or
    --stdio (a stdio MCP server).

    Durations: 90, 90s, 15m, 6h, 2d, 1h30m.
    """
    if (cmd is None) == (stdio is None):
        raise click.UsageError("give --cmd (an HTTP server on $PORT) or --stdio (a stdio MCP server)")
    if (code is None) == (sandbox_id is None):
        raise click.UsageError("give CODE (a directory or archive) or --from-sandbox SANDBOX_ID")
    if (sandbox_path is not None or not packages) and sandbox_id is None:
        raise click.UsageError("--sandbox-path and --no-packages need --from-sandbox")
    settings = _deploy_settings(options)
    if sandbox_id is not None:
        settings = {"cmd": cmd, "stdio": stdio, **settings}
        _publish(conn, sandbox_id, sandbox_path, packages, name, settings, as_json)
        return
    assert code is not None
    progress = DeployProgress()
    try:
        with conn.agentcell() as client:
            info = client.functions.deploy(
                name,
                code,
                cmd=cmd,
                stdio=stdio,
                on_pack_progress=progress.packed,
                on_progress=progress.uploaded,
                **settings,
            )
            url = client.functions.url(info.name)
    finally:
        progress.finish()
    if as_json:
        echo_json(info)
    else:
        click.echo(f"deployed {info.name} version {info.version}: {url}")


def _publish(
    conn: Connection,
    sandbox_id: str,
    path: str | None,
    packages: bool,
    name: str,
    settings: dict[str, Any],
    as_json: bool,
) -> None:
    with conn.sandbox(sandbox_id) as sandbox:
        publish = functools.partial(sandbox.publish, name, packages=packages)
        info = publish(path=path, **settings) if path else publish(**settings)
    with conn.agentcell() as client:
        url = client.functions.url(info.name)
    if as_json:
        echo_json(info)
    else:
        click.echo(f"published {sandbox_id} as {info.name} version {info.version}: {url}")


def _deploy_settings(options: dict[str, Any]) -> dict[str, Any]:
    """The SDK's deploy keywords from the CLI's options (unset ones left out)."""
    hooks = {
        "initialize": _hook("--init-hook", options.pop("init_hook"), options.pop("init_timeout")),
        "pre_stop": _hook("--pre-stop-hook", options.pop("pre_stop_hook"), options.pop("pre_stop_timeout")),
    }
    renamed = {
        "workspace": _workspace(options),
        "concurrency_per_instance": options.pop("concurrency"),
        "ready_timeout_s": options.pop("ready_timeout"),
        "request_timeout_s": options.pop("request_timeout"),
    }
    return {k: v for k, v in {**options, **hooks, **renamed}.items() if v is not None and v != {}}


def _workspace(options: dict[str, Any]) -> WorkspaceConfig | None:
    given = {
        "persist": options.pop("persist"),
        "exclude": list(options.pop("exclude")) or None,
        "keep": options.pop("keep_snapshots"),
        "sync_interval_s": options.pop("sync_interval"),
        "restore": _hook("--restore-hook", options.pop("restore_hook"), options.pop("restore_timeout")),
    }
    fields = {k: Hook(cmd=v) if isinstance(v, str) else v for k, v in given.items() if v is not None}
    if not fields:
        return None
    return validate_options(WorkspaceConfig, fields, "--persist")


def _hook(option: str, cmd: str | None, timeout_s: int | None) -> HookSpec | None:
    if cmd is None:
        if timeout_s is not None:
            raise click.UsageError(f"{option.replace('-hook', '-timeout')} needs {option} CMD")
        return None
    if timeout_s is None:
        return cmd
    fields = {"cmd": cmd, "timeout_s": timeout_s}
    return validate_options(Hook, fields, option, option.replace("-hook", "-timeout"))


class DeployProgress:
    """Two byte counters on stderr (a terminal only): files packed, then the archive sent."""

    def __init__(self) -> None:
        self._packing = Progress("packing")
        self._uploading: Progress | None = None

    def packed(self, count: int) -> None:
        self._packing.add(count)

    def uploaded(self, count: int) -> None:
        if self._uploading is None:  # its rate counts from the first byte sent, not from packing
            self._packing.finish()
            self._uploading = Progress("uploading")
        self._uploading.add(count)

    def finish(self) -> None:
        self._packing.finish()
        if self._uploading is not None:
            self._uploading.finish()


@function_group.command("ls")
@json_option
@pass_connection
def list_functions(conn: Connection, as_json: bool) -> None:
    """List functions."""
    with conn.agentcell() as client:
        found = client.functions.list()
        urls = [client.functions.url(info.name) for info in found]
    if as_json:
        echo_json(found)
    else:
        click.echo(format_functions(found, urls))


@function_group.command("get")
@click.argument("name")
@json_always_option
@pass_connection
def get(conn: Connection, name: str) -> None:
    """Print a function's details (its live version's config, counts) as JSON."""
    with conn.agentcell() as client:
        echo_json(client.functions.get(name))


@function_group.command("rm")
@click.argument("name")
@pass_connection
def remove(conn: Connection, name: str) -> None:
    """Delete a function: its sessions end and its instances stop."""
    with conn.agentcell() as client:
        if not client.functions.delete(name):
            raise CliError(f"function {name!r} not found")


def format_functions(functions: Sequence[FunctionInfo], urls: Sequence[str]) -> str:
    header = ("NAME", "VERSION", "AFFINITY", "INSTANCES", "WARM", "SESSIONS", "URL")
    rows = [
        (
            info.name,
            str(info.version),
            info.config.affinity.kind,
            str(info.instances),
            str(info.warm_instances),
            str(info.sessions),
            url,
        )
        for info, url in zip(functions, urls, strict=True)
    ]
    return render_table(header, rows)
