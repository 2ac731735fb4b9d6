"""Directory watchers for envd's WatchDir / CreateWatcher, over the node's inotify `FileWatch`.

Events keep envd's shape (`{"name", "type": "EVENT_TYPE_…"}`, names relative to the watched
directory). A watcher whose directory was removed answers NotFound once its last events are read.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from agentcell.errors import NotFound
from agentcell.server.sandbox.driver import SandboxFiles
from agentcell.server.sandbox.file_watch import FileWatch


def new_watcher_id() -> str:
    return "w_" + secrets.token_hex(8)


class Watcher:
    def __init__(self, files: SandboxFiles, path: str, recursive: bool) -> None:
        self.id = new_watcher_id()
        self._files = files
        self._path = path
        self._recursive = recursive
        self._watch: FileWatch | None = None
        self.closed = False

    async def start(self) -> None:
        """Begin watching; NotFound or InvalidArgument when `path` is not a directory."""
        self._watch = await FileWatch.open(self._files, self._path, recursive=self._recursive)
        if self.closed:  # (closed while starting)
            self._watch.close()

    def end_when(self, event: asyncio.Event, reason: str) -> None:
        """Stop watching once `event` is set (FileWatch.end_when)."""
        self._started().end_when(event, reason)

    async def wait(self, timeout_s: float) -> None:
        """Until a change is waiting or the directory went, or `timeout_s` passed."""
        await self._started().wait(timeout_s)

    async def changes(self) -> list[dict[str, Any]]:
        """Events since the last call, as envd's FilesystemEvent messages."""
        watch = self._started()
        events = watch.take()
        if not events and watch.ended is not None:
            raise NotFound(f"the watched directory {self._path} is gone ({watch.ended})")
        return [{"name": e.name, "type": f"EVENT_TYPE_{e.kind.upper()}"} for e in events]

    def close(self) -> None:
        self.closed = True
        if self._watch is not None:
            self._watch.close()

    def _started(self) -> FileWatch:
        assert self._watch is not None, "Watcher.start() first"
        return self._watch
