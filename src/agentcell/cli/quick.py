"""`agentcell sandbox create` in its plain forms, before click and the SDK are imported.

A process that only creates a sandbox and prints its id should take a few interpreter starts, not
the ~30 that click, httpx and pydantic cost. The forms handled here are the global `--url` and
`--api-key`, then `sandbox create` with any of `--template NAME`, `--env K=V`, `--metadata K=V`;
they print what the full command prints. Any other argument, a value the full command would refuse,
and every call `agentcell.client.quick` leaves to the SDK go to the full command (`None`), which
parses, sends and reports as always.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

_GLOBAL = {"--url": "api_url", "--api-key": "api_key"}
_PAIRS = {"--env": "env", "--metadata": "metadata"}


def run(argv: Sequence[str]) -> int | None:
    """The exit status, once the sandbox is created and its id printed; None: not handled."""
    parsed = _parse(argv)
    if parsed is None:
        return None
    connection, body = parsed
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


def _parse(argv: Sequence[str]) -> tuple[dict[str, str], dict[str, Any]] | None:
    """(global options, request body) of a plain `sandbox create`, else None."""
    args = _split_equals(argv)
    connection: dict[str, str] = {}
    while args and args[0] in _GLOBAL:
        if len(args) < 2 or args[1].startswith("-"):
            return None
        connection[_GLOBAL[args[0]]] = args[1]
        args = args[2:]
    if args[:2] != ["sandbox", "create"]:
        return None
    body: dict[str, Any] = {"env": {}, "metadata": {}}
    options = args[2:]
    for option, value in zip(options[::2], options[1::2], strict=False):
        if option == "--template" and "template" not in body and not value.startswith("-"):
            body["template"] = value
        elif option in _PAIRS and not value.startswith("-"):
            key, sep, val = value.partition("=")
            if not sep or not key:
                return None  # the full command's usage error
            body[_PAIRS[option]][key] = val
        else:
            return None
    return (connection, body) if len(options) % 2 == 0 else None


def _split_equals(argv: Sequence[str]) -> list[str]:
    """`--opt=value` as `--opt value`, as click takes both."""
    args: list[str] = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if sep and name in (*_GLOBAL, *_PAIRS, "--template"):
            args += [name, value]
        else:
            args.append(arg)
    return args
