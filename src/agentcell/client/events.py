"""Command event streams: NDJSON lines in, typed events out, always ending in one `end`.

`CommandResult` is what a stream adds up to. `check=False` is the SDK-wide convention: a command
that exits non-zero is a result, not an exception; `CommandResult.check()` (or `check=True`)
turns it into `CommandExitError`.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass

from pydantic import ValidationError

from agentcell.client.command_wire import not_an_event, stream_without_end
from agentcell.client.errors import CommandExitError
from agentcell.protocol.commands import COMMAND_EVENT, CommandEvent, EndEvent, OutputEvent, StartEvent

OutputCallback = Callable[[str], object]
"""Called with each chunk of output as it arrives; may be a plain or an async function."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The whole output and the end of one command. `exit_code` follows the shell (128 + N when
    killed by signal N); `timed_out` says its `timeout_s` passed and it was killed; `error` is the
    server's note on why it ended abnormally (e.g. "timed out after 5 s")."""

    stdout: str
    stderr: str
    exit_code: int
    signal: int | None = None
    timed_out: bool = False
    error: str | None = None
    process_id: str | None = None
    pid: int | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None

    def check(self) -> CommandResult:
        """Return self when the command succeeded, else raise CommandExitError carrying it."""
        if not self.ok:
            raise CommandExitError(self)
        return self


async def parse_events(lines: AsyncIterable[str]) -> AsyncIterator[CommandEvent]:
    """Events of one NDJSON stream, up to and including its `end`. A stream that stops before its
    `end` raises ProtocolError: the command's outcome is then unknown."""
    async for line in lines:
        if not line.strip():
            continue
        try:
            event = COMMAND_EVENT.validate_json(line)
        except ValidationError:
            raise not_an_event(line) from None
        yield event
        if isinstance(event, EndEvent):
            return
    raise stream_without_end()


async def collect(
    events: AsyncIterable[CommandEvent],
    on_stdout: OutputCallback | None = None,
    on_stderr: OutputCallback | None = None,
) -> CommandResult:
    """Add a stream up into a CommandResult, handing each output chunk to its callback first."""
    stdout: list[str] = []
    stderr: list[str] = []
    start: StartEvent | None = None
    async for event in events:
        if isinstance(event, StartEvent):
            start = event
        elif isinstance(event, OutputEvent):
            is_stdout = event.type == "stdout"
            (stdout if is_stdout else stderr).append(event.data)
            await _call(on_stdout if is_stdout else on_stderr, event.data)
        else:
            return _result(event, "".join(stdout), "".join(stderr), start)
    raise stream_without_end()


def _result(end: EndEvent, stdout: str, stderr: str, start: StartEvent | None) -> CommandResult:
    return CommandResult(
        stdout=stdout,
        stderr=stderr,
        exit_code=end.exit_code,
        signal=end.signal,
        timed_out=end.timed_out,
        error=end.error,
        process_id=start.process_id if start else None,
        pid=start.pid if start else None,
    )


async def _call(callback: OutputCallback | None, data: str) -> None:
    if callback is None:
        return
    returned = callback(data)
    if inspect.isawaitable(returned):
        await returned
