"""WatchStreams: the native API's directory watches (GET .../files/watch), at most MAX_WATCHES per
sandbox, each a stream of typed lines that always ends in one `end`.

A stream is a `FileWatch` (inotify, opened through the sandbox's confined file access) that also
ends when its sandbox stops running (`Sandbox.stopping`), so that a kill, a pause or a timeout ends
it at once even when inotify says nothing (a sandbox's files may outlive its instance). A quiet
stream costs nothing until its keepalive. Whatever ends a stream (its `end`, the client leaving,
the server stopping) closes its watch and gives its place back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from agentcell.errors import QuotaExceeded
from agentcell.protocol.files import (
    WatchEnd,
    WatchEvent,
    WatchKeepalive,
    WatchLine,
    WatchOverflow,
    WatchStart,
)
from agentcell.server.sandbox.file_watch import FileEvent, FileWatch
from agentcell.server.scheduler.sandboxes import SandboxService

MAX_WATCHES = 32
"""watch streams one sandbox holds at once: each holds an inotify instance (the node has 128 per
user by default) and a watch per directory it covers"""
KEEPALIVE_S = 15.0
"""a quiet stream sends a `keepalive` this often, so that proxies keep it open"""
SANDBOX_ENDED = "its sandbox ended (killed, paused or past its timeout)"

Batches = AsyncGenerator[list[WatchLine], None]
"""a stream's lines, in the batches it writes them in"""


class WatchStreams:
    """Owns how many watch streams each sandbox holds."""

    def __init__(self, sandboxes: SandboxService) -> None:
        self._sandboxes = sandboxes
        self._held: dict[str, int] = {}
        """sandbox id → its open streams (an id is gone once it holds none)"""

    def held(self, sandbox_id: str) -> int:
        return self._held.get(sandbox_id, 0)

    async def open(self, sandbox_id: str, path: str, recursive: bool) -> Batches:
        """The stream of a new watch of the directory `path`, in batches of lines (one write each),
        its first batch the `start`. The watch is open when this returns: a refusal (NotFound,
        InvalidArgument for a file, QuotaExceeded past MAX_WATCHES) is raised here, before any
        line. The stream has begun too, so that dropping it unread (a client gone before the
        answer started) still closes the watch, as an unfinished async generator is closed."""
        lines = self._lines(sandbox_id, path, recursive)
        first = await anext(lines)
        return _resumed(first, lines)

    async def _lines(self, sandbox_id: str, path: str, recursive: bool) -> Batches:
        sandbox = self._sandboxes.running(sandbox_id)
        files = self._sandboxes.files(sandbox_id)
        self._take_place(sandbox.id)
        try:
            watch = await FileWatch.open(files, path, recursive=recursive)
            watch.end_when(sandbox.stopping, SANDBOX_ENDED)
            try:
                yield [WatchStart(path=watch.path)]
                async for batch in _changes(watch):
                    yield batch
            finally:
                watch.close()
        finally:
            self._give_place(sandbox.id)

    def _take_place(self, sandbox_id: str) -> None:
        held = self.held(sandbox_id)
        if held >= MAX_WATCHES:
            raise QuotaExceeded(f"a sandbox holds at most {MAX_WATCHES} watches; stop one first")
        self._held[sandbox_id] = held + 1

    def _give_place(self, sandbox_id: str) -> None:
        held = self._held.pop(sandbox_id) - 1
        if held:
            self._held[sandbox_id] = held


async def _changes(watch: FileWatch) -> Batches:
    """The lines after the `start`, up to and including the `end`."""
    loop = asyncio.get_running_loop()
    told_overflow = False
    quiet_since = loop.time()
    while True:
        await watch.wait(max(0.0, quiet_since + KEEPALIVE_S - loop.time()))
        batch: list[WatchLine] = [_event_line(watch.path, event) for event in watch.take()]
        if watch.overflowed and not told_overflow:
            told_overflow = True
            batch.append(WatchOverflow())
        if watch.ended is not None:
            yield [*batch, WatchEnd(reason=watch.ended)]
            return
        if batch:
            quiet_since = loop.time()
        elif loop.time() - quiet_since >= KEEPALIVE_S:
            quiet_since = loop.time()
            batch.append(WatchKeepalive())
        if batch:
            yield batch


def _event_line(root: str, event: FileEvent) -> WatchEvent:
    return WatchEvent(kind=event.kind, name=event.name, path=f"{root.rstrip('/')}/{event.name}")


async def _resumed(first: list[WatchLine], rest: Batches) -> Batches:
    """`first`, then `rest`, which is closed whenever this ends."""
    async with contextlib.aclosing(rest):
        yield first
        async for batch in rest:
            yield batch
