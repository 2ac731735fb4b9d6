"""`agentcell exec`: run one command in a sandbox, its output streamed live (or, with --json, one
document at the end), its exit code ours."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import click

from agentcell.cli.context import CliError, Connection, parse_pairs, pass_connection
from agentcell.cli.output import echo_json, json_option
from agentcell.cli.stdio import StdinNotText, piped_stdin, relay, stdin_text
from agentcell.client.commands import FOREGROUND_TIMEOUT_S


@click.command("exec")
@click.argument("sandbox_id")
@click.argument("argv", nargs=-1, required=True)
@click.option("--env", "env", multiple=True, callback=parse_pairs, metavar="K=V", help="Repeatable.")
@click.option("--cwd", default=None, help="Working directory in the sandbox (default /home/user).")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Kill the command after this many seconds (default 60; 0: no limit).",
)
@click.option("-n", "--no-stdin", is_flag=True, help="Do not send this terminal's stdin even when piped.")
@json_option
@pass_connection
def execute(
    conn: Connection,
    sandbox_id: str,
    argv: tuple[str, ...],
    env: dict[str, str],
    cwd: str | None,
    timeout_s: float | None,
    no_stdin: bool,
    as_json: bool,
) -> None:
    """Run a command in SANDBOX_ID: `agentcell exec SANDBOX_ID -- CMD ARGS…`.

    One argument is a shell command line (run by bash -c); several are run as they are. Output
    streams to this stdout/stderr as it comes; stdin is sent when it is not a terminal. With --json
    nothing streams: one object with stdout, stderr, exit_code, signal, timed_out and error is
    printed at the end. Exits with the command's exit code either way.
    """
    stdin = None if no_stdin else read_piped_stdin()
    command: str | list[str] = argv[0] if len(argv) == 1 else list(argv)
    limit_s = FOREGROUND_TIMEOUT_S if timeout_s is None else (timeout_s or None)
    with conn.sandbox(sandbox_id) as sandbox, _exit_on_interrupt():
        result = sandbox.commands.run(
            command,
            env=env,
            cwd=cwd,
            stdin=stdin,
            timeout_s=limit_s,
            on_stdout=None if as_json else lambda data: relay(sys.stdout, data),
            on_stderr=None if as_json else lambda data: relay(sys.stderr, data),
        )
    if as_json:
        echo_json(result)
    elif result.error:
        click.echo(f"agentcell: {result.error}", err=True)
    sys.exit(result.exit_code)


@contextlib.contextmanager
def _exit_on_interrupt() -> Iterator[None]:
    """Ctrl-C stops waiting (the server then kills the command, whose stream was dropped) and
    exits 130, as a shell does."""
    try:
        yield
    except KeyboardInterrupt:
        sys.exit(130)


def read_piped_stdin() -> str | None:
    data = piped_stdin()
    try:
        return None if data is None else stdin_text(data)
    except StdinNotText as exc:
        raise CliError(str(exc)) from None
