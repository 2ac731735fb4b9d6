"""`agentcell run-code`: run code in a sandbox's code context, output streamed live (or, with
--json, the whole Execution as one document at the end)."""

from __future__ import annotations

import sys

import click

from agentcell.cli.context import Connection, parse_pairs, pass_connection
from agentcell.cli.execute import _exit_on_interrupt, read_piped_stdin
from agentcell.cli.output import echo_json, json_option, to_plain
from agentcell.cli.stdio import relay
from agentcell.client.code import Execution
from agentcell.protocol.code import DEFAULT_TIMEOUT_S, LANGUAGES

EXIT_ERROR = 1
EXIT_TIMEOUT = 124


@click.command("run-code")
@click.argument("sandbox_id")
@click.argument("code", required=False)
@click.option("-l", "--language", type=click.Choice(LANGUAGES), default=None, help="Default python.")
@click.option("-c", "--context", "context_id", default=None, help="A context id (ctx_…) instead.")
@click.option("--env", "env", multiple=True, callback=parse_pairs, metavar="K=V", help="Repeatable.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=None,
    help=f"Interrupt after this many seconds (default {DEFAULT_TIMEOUT_S:g}; 0: no limit).",
)
@json_option
@pass_connection
def run_code(
    conn: Connection,
    sandbox_id: str,
    code: str | None,
    language: str | None,
    context_id: str | None,
    env: dict[str, str],
    timeout_s: float | None,
    as_json: bool,
) -> None:
    """Run CODE (or stdin) in SANDBOX_ID's default context of the language, or in --context.

    State persists between runs of the same context. stdout/stderr stream as they come; the value of
    the last expression is printed after them; an error's traceback goes to stderr. With --json
    nothing streams: the Execution (text, results, logs, error, status…) is printed at the end.
    Exits 0, 1 on an error, 124 on a timeout, either way.
    """
    source = code if code is not None else read_piped_stdin()
    if source is None:
        raise click.UsageError("give CODE as an argument or on stdin")
    limit_s = DEFAULT_TIMEOUT_S if timeout_s is None else (timeout_s or None)
    with conn.sandbox(sandbox_id) as sandbox, _exit_on_interrupt():
        execution = sandbox.run_code(
            source,
            context=context_id,
            language=language,
            env=env,
            timeout_s=limit_s,
            on_stdout=None if as_json else lambda text: relay(sys.stdout, text),
            on_stderr=None if as_json else lambda text: relay(sys.stderr, text),
        )
    if as_json:
        echo_json({"text": execution.text, **to_plain(execution)})
    else:
        _report(execution)
    sys.exit(exit_status(execution))


def _report(execution: Execution) -> None:
    if execution.text is not None:
        click.echo(execution.text)
    for result in execution.results:
        if not result.is_main_result:
            click.echo(f"[{', '.join(result.formats())}]")
    if execution.error is not None:
        error = execution.error
        click.echo(error.traceback or f"{error.name}: {error.value}", err=True)


def exit_status(execution: Execution) -> int:
    if execution.error is None:
        return 0
    return EXIT_TIMEOUT if execution.timed_out else EXIT_ERROR
