"""The commands wire format as far as it needs no pydantic: one definition for the SDK
(client.commands, client.events) and for the stdlib-only `agentcell exec` of client.quick.

It holds the request body's fields (the SDK validates them with the wire model before sending;
the quick path leaves the refusal of a bad value to the server, then to the SDK), the default
foreground timeout, and the errors a broken event stream is reported with. A command's exit code
needs no derivation on this side: the server's `end` event carries it as the shell would give it
(128 + N when killed by signal N, a timeout being a SIGKILL), and both read it from there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from agentcell.client.errors import ProtocolError

FOREGROUND_TIMEOUT_S: Final = 60.0


def command_fields(
    cmd: str | Sequence[str],
    background: bool,
    env: Mapping[str, str] | None,
    cwd: str | None,
    timeout_s: float | None,
    stdin: str | None,
) -> dict[str, Any]:
    """The body of POST /v1/sandboxes/{id}/commands: a string is a shell line (`cmd`), a sequence
    an `argv`; an empty env and an unset cwd or stdin are left out (the server's defaults)."""
    fields: dict[str, Any] = {"cmd": cmd} if isinstance(cmd, str) else {"argv": list(cmd)}
    fields |= {"background": background, "timeout_s": timeout_s}
    optional = {"env": dict(env) if env else None, "cwd": cwd, "stdin": stdin}
    fields |= {name: value for name, value in optional.items() if value is not None}
    return fields


def not_an_event(line: str) -> ProtocolError:
    return ProtocolError(f"the command stream sent a line that is not an event: {line[:200]!r}")


def stream_without_end() -> ProtocolError:
    """The stream stopped before its `end`: the command may still run, and nobody knows its exit."""
    return ProtocolError(
        "the command stream ended without its 'end' event (the server or the connection stopped "
        "early); the command's exit code is unknown and it may still be running"
    )
