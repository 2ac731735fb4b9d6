"""`agentcell serve`: replace this process with the server (`python -m agentcell.server`).

The CLI never imports the server (an import-linter contract): it execs it with the same Python.
"""

from __future__ import annotations

import os
import sys

import click


@click.command("serve")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port (default 8700; 0: any free one)."
)
@click.option(
    "--state-dir", type=click.Path(file_okay=False), default=None, help="Database, helper, instances."
)
@click.option(
    "--driver", type=click.Choice(["linux", "fake"]), default=None, help="Sandbox driver (fake: tests only)."
)
def serve(host: str | None, port: int | None, state_dir: str | None, driver: str | None) -> None:
    """Run the agentcell server in the foreground."""
    argv = [sys.executable, "-m", "agentcell.server", *server_flags(host, port, state_dir, driver)]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)


def server_flags(host: str | None, port: int | None, state_dir: str | None, driver: str | None) -> list[str]:
    given = {"--host": host, "--port": port, "--state-dir": state_dir, "--driver": driver}
    return [part for flag, value in given.items() if value is not None for part in (flag, str(value))]
