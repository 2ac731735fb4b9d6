"""Directory watchers for envd's WatchDir / CreateWatcher, by polling.

agentcell has no inotify inside sandboxes yet, so a watcher compares listings of the directory:
an entry that appears is `create` (and `write` when it already has content), one whose size or
mtime changed is `write`, one that disappeared is `remove`. Changes made and undone between two
looks are not seen, and chmod/rename are not told apart (a rename is a remove plus a create).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agentcell.errors import InvalidArgument
from agentcell.server.sandbox.driver import FileStat, SandboxFiles

RECURSIVE_DEPTH = 16
POLL_INTERVAL_S = 0.2


@dataclass(frozen=True, slots=True)
class Seen:
    type: str
    size: int
    mtime: datetime


def new_watcher_id() -> str:
    return "w_" + secrets.token_hex(8)


class Watcher:
    def __init__(self, files: SandboxFiles, path: str, recursive: bool) -> None:
        self.id = new_watcher_id()
        self._files = files
        self._path = path
        self._depth = RECURSIVE_DEPTH if recursive else 1
        self._seen: dict[str, Seen] = {}
        self._root = ""
        self.closed = False

    async def start(self) -> None:
        """Take the first look; NotFound or InvalidArgument when `path` is not a directory."""
        found = await self._files.stat(self._path)
        if found.type != "dir":
            raise InvalidArgument(f"{self._path} is not a directory; watch a directory")
        self._root = found.path.rstrip("/") + "/"
        self._seen = await self._look()

    async def _look(self) -> dict[str, Seen]:
        entries: list[FileStat] = await self._files.list(self._path, self._depth)
        return {e.path.removeprefix(self._root): Seen(e.type, e.size, e.mtime) for e in entries}

    async def changes(self) -> list[dict[str, Any]]:
        """Events since the last look, as envd's FilesystemEvent messages."""
        now = await self._look()
        before, self._seen = self._seen, now
        events: list[dict[str, Any]] = []
        for name in sorted(now.keys() - before.keys()):
            events.append(_event(name, "EVENT_TYPE_CREATE"))
            if now[name].type == "file" and now[name].size > 0:
                events.append(_event(name, "EVENT_TYPE_WRITE"))
        for name in sorted(now.keys() & before.keys()):
            old, new = before[name], now[name]
            if new.type == "file" and (old.size, old.mtime) != (new.size, new.mtime):
                events.append(_event(name, "EVENT_TYPE_WRITE"))
        events.extend(_event(name, "EVENT_TYPE_REMOVE") for name in sorted(before.keys() - now.keys()))
        return events

    def close(self) -> None:
        self.closed = True


def _event(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "type": kind}
