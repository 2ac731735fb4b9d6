"""`agentcell sandbox create` and `agentcell exec` in their plain forms, before click and the SDK
are imported.

A process that only creates a sandbox, or runs one command in it, should take a few interpreter
starts, not the ~30 that click, httpx and pydantic cost. The forms handled here are the global
`--url` and `--api-key`, then either `sandbox create` with any of `--template NAME`, `--env K=V`,
`--metadata K=V`, or `exec SANDBOX_ID CMD...` with any of `--env K=V`, `--cwd DIR`, `--timeout S`,
`-n`/`--no-stdin` (and `--` before CMD); they print, stream and exit as the full command does. Any
other argument, a value the full command would refuse, and every call `agentcell.client.quick`
leaves to the SDK go to the full command (`None`), which parses, sends and reports as always.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentcell.client.quick import Server

_GLOBAL = {"--url": "api_url", "--api-key": "api_key"}
_PAIRS = {"--env": "env", "--metadata": "metadata"}
_EXEC_VALUES = ("--env", "--cwd", "--timeout")


@dataclass(frozen=True, slots=True)
class ExecLine:
    """What a plain `agentcell exec` line asks for; `timeout_s` as given (None: not given)."""

    sandbox_id: str
    command: str | list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout_s: float | None = None
    no_stdin: bool = False


def run(argv: Sequence[str]) -> int | None:
    """The exit status, once the line was answered here; None: not handled."""
    created = _parse_create(argv)
    if created is not None:
        return _create(*created)
    executed = _parse_exec(argv)
    if executed is not None:
        return _exec(*executed)
    return None


def _create(connection: dict[str, str], body: dict[str, Any]) -> int | None:
    from agentcell.client.errors import AgentcellClientError
    from agentcell.client.quick import NotQuick, create_sandbox

    try:
        created = create_sandbox(body, connection.get("api_url"), connection.get("api_key"))
    except NotQuick:
        return None
    except AgentcellClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Aborted!", file=sys.stderr)  # as click ends the full command
        return 1
    print(created["id"])
    if created.get("traffic_token") is not None:  # stdout stays the id alone, for scripts
        print(f"traffic token: {created['traffic_token']}", file=sys.stderr)
    return 0


def _exec(connection: dict[str, str], line: ExecLine) -> int | None:
    """Run the command as cli/execute.py does: its output streamed, the server's note on an
    abnormal end on stderr, its exit code ours; Ctrl-C while it runs exits 130."""
    from agentcell.cli.stdio import StdinNotText, piped_stdin, stdin_text
    from agentcell.client.command_wire import FOREGROUND_TIMEOUT_S, command_fields
    from agentcell.client.errors import AgentcellClientError
    from agentcell.client.quick import NotQuick, Server

    try:
        server = Server.resolve(connection.get("api_url"), connection.get("api_key"))
        piped = None if line.no_stdin else piped_stdin()
        stdin = None if piped is None else stdin_text(piped)
    except NotQuick:
        return None
    except (StdinNotText, OSError) as exc:
        return _error(exc)
    except KeyboardInterrupt:
        print("Aborted!", file=sys.stderr)  # as click ends the full command
        return 1
    limit_s = FOREGROUND_TIMEOUT_S if line.timeout_s is None else (line.timeout_s or None)  # as execute.py
    body = command_fields(line.command, False, line.env, line.cwd, limit_s, stdin)
    try:
        end = _stream(server, line.sandbox_id, body)
    except NotQuick:
        if piped is not None:  # already read: the full command reads the same bytes
            sys.stdin = io.TextIOWrapper(io.BytesIO(piped))
        return None
    except (AgentcellClientError, OSError) as exc:  # (OSError: writing the output, e.g. a closed pipe)
        return _error(exc)
    except KeyboardInterrupt:
        return 130  # the server kills the command whose stream was dropped
    if end.get("error"):
        print(f"agentcell: {end['error']}", file=sys.stderr)
    exit_code: int = end["exit_code"]
    return exit_code


def _error(exc: Exception) -> int:
    """`error: <message>` and exit status 1, as the full command reports what it expected."""
    print(f"error: {str(exc) or type(exc).__name__}", file=sys.stderr)
    return 1


def _stream(server: Server, sandbox_id: str, body: dict[str, Any]) -> dict[str, Any]:
    from agentcell.cli.stdio import relay
    from agentcell.client.quick import run_command

    streams = {"stdout": sys.stdout, "stderr": sys.stderr}
    return run_command(server, sandbox_id, body, lambda kind, data: relay(streams[kind], data))


def _parse_create(argv: Sequence[str]) -> tuple[dict[str, str], dict[str, Any]] | None:
    """(global options, request body) of a plain `sandbox create`, else None."""
    parsed = _parse_globals(argv)
    if parsed is None or parsed[1][:2] != ["sandbox", "create"]:
        return None
    connection, args = parsed
    body: dict[str, Any] = {"env": {}, "metadata": {}}
    options = _split_equals(args[2:], (*_PAIRS, "--template"))
    for option, value in zip(options[::2], options[1::2], strict=False):
        if option == "--template" and "template" not in body and not value.startswith("-"):
            body["template"] = value
        elif option in _PAIRS and not value.startswith("-"):
            pair = _pair(value)
            if pair is None:
                return None  # the full command's usage error
            body[_PAIRS[option]][pair[0]] = pair[1]
        else:
            return None
    return (connection, body) if len(options) % 2 == 0 else None


def _parse_exec(argv: Sequence[str]) -> tuple[dict[str, str], ExecLine] | None:
    """(global options, the command line) of a plain `exec`, else None.

    As click parses it: options may come anywhere before `--` (after it, and for a lone `-`,
    everything is an argument); the first argument is the sandbox, the rest the command."""
    parsed = _parse_globals(argv)
    if parsed is None or parsed[1][:1] != ["exec"]:
        return None
    connection, args = parsed
    args = _split_equals(args[1:], _EXEC_VALUES)
    positional: list[str] = []
    values: dict[str, str] = {}
    env: dict[str, str] = {}
    no_stdin = False
    while args:
        arg = args.pop(0)
        if arg == "--":
            positional += args
            break
        if arg == "-" or not arg.startswith("-"):
            positional.append(arg)
        elif arg in ("-n", "--no-stdin"):
            no_stdin = True
        elif arg in _EXEC_VALUES and args and not args[0].startswith("-"):
            value = args.pop(0)
            if arg == "--env":
                pair = _pair(value)
                if pair is None:
                    return None  # the full command's usage error
                env[pair[0]] = pair[1]
            elif arg in values:
                return None  # given twice: click's to settle
            else:
                values[arg] = value
        else:
            return None
    timeout_s = _seconds(values["--timeout"]) if "--timeout" in values else None
    if len(positional) < 2 or ("--timeout" in values and timeout_s is None):
        return None
    sandbox_id, *command = positional
    line = ExecLine(
        sandbox_id,
        command[0] if len(command) == 1 else command,  # one argument: a shell line, as execute.py
        env,
        values.get("--cwd"),
        timeout_s,
        no_stdin,
    )
    return connection, line


def _parse_globals(argv: Sequence[str]) -> tuple[dict[str, str], list[str]] | None:
    """(the global `--url` and `--api-key`, the arguments after them), else None."""
    args = list(argv)
    connection: dict[str, str] = {}
    while args and args[0].partition("=")[0] in _GLOBAL:
        name, sep, value = args.pop(0).partition("=")
        if not sep:
            if not args or args[0].startswith("-"):
                return None  # click's "requires an argument", or a value it would take as given
            value = args.pop(0)
        connection[_GLOBAL[name]] = value
    return connection, args


def _split_equals(args: Sequence[str], names: Sequence[str]) -> list[str]:
    """`--opt=value` as `--opt value` for the options `names`, as click takes both, up to `--`
    (after it, `--env=x` is an argument)."""
    split: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--":
            return split + list(args[index:])
        name, sep, value = arg.partition("=")
        split += [name, value] if sep and name in names else [arg]
    return split


def _pair(value: str) -> tuple[str, str] | None:
    """`K=V` as cli/context.py's parse_pairs takes it; None for what it refuses."""
    key, sep, val = value.partition("=")
    return (key, val) if sep and key else None


def _seconds(value: str) -> float | None:
    """A --timeout in plain decimal notation (what else click's FloatRange takes, it may take)."""
    digits = value.replace(".", "", 1)
    return float(value) if value.isascii() and digits.isdigit() else None
