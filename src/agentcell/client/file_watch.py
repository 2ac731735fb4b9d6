"""Directory watches (async core): the changes to a sandbox directory as `FileEvent`s, as they
happen, from the NDJSON lines of GET /v1/sandboxes/{id}/files/watch (docs/api.md).

    async with sbx.files.watch("/home/user/project", recursive=True) as watch:
        await sbx.commands.run("make")              # the watch is open: nothing is missed
        async for event in watch:                   # until the directory or the sandbox goes
            print(event.kind, event.name)

`async for event in sbx.files.watch(...)` works alone too; the watch then opens at the first
step of the loop. Leaving the loop closes the stream (and the server's watch) once the watch
object is dropped; `async with` or `aclose()` close it at once.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from agentcell.client.api import ApiClient, Params
from agentcell.client.errors import ProtocolError

if TYPE_CHECKING:
    from agentcell.protocol.files import WatchLine

FileEventKind = Literal["create", "write", "remove", "rename", "chmod", "overflow"]
SERVER_KEEPALIVE_S = 15.0
"""a quiet watch stream gets a keepalive line this often: the SDK waits that long, plus its
`request_timeout_s`, before it takes a silent stream for a lost server"""


@dataclass(frozen=True, slots=True)
class FileEvent:
    """One change: `create` (made, or moved in), `write`, `remove`, `rename` (moved away; its new
    name, if in the watched tree, comes as a `create`) or `chmod` (mode, owner or times). `name` is
    relative to the watched directory, `path` absolute. Kind `overflow` (once, `name` empty, `path`
    the watched directory) says that the server dropped changes past it, too many unread: list the
    directory to catch up."""

    kind: FileEventKind
    name: str
    path: str


class AsyncFileWatch:
    """An open watch (see the module docstring). `path` is the watched directory once open,
    `overflowed` whether changes were dropped, `ended` why the watch ended (its directory removed
    or moved, its sandbox ended) once iteration stopped at the server's `end`."""

    def __init__(self, api: ApiClient, files_path: str, params: Params) -> None:
        self._lines = _watch_lines(api, f"{files_path}/watch", params)
        self._started = self._closed = False
        self.path: str | None = None
        self.overflowed = False
        self.ended: str | None = None

    async def start(self) -> AsyncFileWatch:
        """Open the watch (`async with` does): changes from now on are all reported. NotFoundError
        for a missing directory, InvalidArgumentError for a file, QuotaExceededError past 32
        watches of one sandbox."""
        if self._started or self._closed:
            return self
        first = await anext(self._lines, None)
        if first is None:
            raise _stream_without_end()
        if first.type != "start":
            raise ProtocolError(f"the watch stream began with {first.type!r}, not 'start'")
        self._started, self.path = True, first.path
        return self

    def __aiter__(self) -> AsyncFileWatch:
        return self

    async def __anext__(self) -> FileEvent:
        await self.start()
        async for line in self._lines:
            if self._closed:  # (by another task, while this one waited)
                break
            if line.type == "event":
                return FileEvent(line.kind, line.name, line.path)
            if line.type == "overflow":
                self.overflowed = True
                return FileEvent("overflow", "", self.path or "")
            if line.type == "end":
                self.ended = line.reason
                break
        if not self._closed and self.ended is None:
            raise _stream_without_end()
        await self.aclose()
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop watching (the server closes its watch). Idempotent. Called while a step of the
        loop is under way (another task waiting for the next event), the watch stops at that
        step's end: an event, or within 15 s the keepalive of a quiet stream. A step cancelled
        (Ctrl-C in the sync SDK) closes the stream itself as it unwinds."""
        self._closed = True
        if not getattr(self._lines, "ag_running", False):
            await self._lines.aclose()

    async def __aenter__(self) -> AsyncFileWatch:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def _watch_lines(api: ApiClient, url: str, params: Params) -> AsyncGenerator[WatchLine, None]:
    """The stream's lines, parsed. A function of its own, holding no AsyncFileWatch: a watch
    dropped in the middle of a loop is then freed at once, and with it this generator, whose
    closing (by the event loop) closes the HTTP stream."""
    async with api.stream(
        "GET", url, params=params, wait_forever=True, run_limit_s=SERVER_KEEPALIVE_S
    ) as response:
        async for line in response.aiter_lines():
            if line.strip():
                yield _parsed(line)


def _parsed(line: str) -> WatchLine:
    from pydantic import ValidationError

    from agentcell.protocol.files import WATCH_LINE

    try:
        return WATCH_LINE.validate_json(line)
    except ValidationError:
        raise ProtocolError(
            f"the watch stream sent a line that is not a watch line: {line[:200]!r}"
        ) from None


def _stream_without_end() -> ProtocolError:
    return ProtocolError(
        "the watch stream ended without its 'end' line (the server or the connection stopped early); "
        "changes after it may be missing: watch again"
    )
