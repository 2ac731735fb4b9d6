"""envd's `filesystem.Filesystem` service over agentcell's sandbox files (as the sandbox user)."""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
from collections.abc import AsyncIterator
from typing import Any

from agentcell.errors import InvalidArgument, NotFound, PayloadTooLarge, PermissionDenied, QuotaExceeded
from agentcell.protocol.files import wire_text
from agentcell.server.e2b.connect import RpcError
from agentcell.server.e2b.entries import entry_info
from agentcell.server.e2b.registry import E2bRegistry
from agentcell.server.e2b.watch import Watcher
from agentcell.server.sandbox.driver import FileStat, SandboxFiles
from agentcell.server.scheduler.sandboxes import Sandbox

Message = dict[str, Any]
MAX_WATCHERS = 32
MAX_DEPTH = 16
MAX_LINK_HOPS = 8
STREAM_KEEPALIVE_S = 30.0


async def _followed(files: SandboxFiles, entry: FileStat) -> FileStat:
    """As envd reports a symlink: the type of what it finally points to, and that target's
    absolute path (`filepath.EvalSymlinks`); a dangling or looping link, or one whose target the
    sandbox user may not look at, stays a symlink."""
    if entry.type != "symlink":
        return entry
    found, hops = entry, 0
    while found.type == "symlink" and found.symlink_target is not None and hops < MAX_LINK_HOPS:
        target = posixpath.normpath(posixpath.join(posixpath.dirname(found.path), found.symlink_target))
        try:
            found = await files.stat(target)
        except (NotFound, InvalidArgument, PermissionDenied):
            return entry
        hops += 1
    if found.type == "symlink":
        return entry
    return dataclasses.replace(entry, type=found.type, symlink_target=found.path)


def _entry(stat: FileStat) -> Message:
    """EntryInfo with names as valid text (see `wire_text`)."""
    target = None if stat.symlink_target is None else wire_text(stat.symlink_target)
    return entry_info(
        dataclasses.replace(stat, path=wire_text(stat.path), name=wire_text(stat.name), symlink_target=target)
    )


def _events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**event, "name": wire_text(event["name"])} for event in events]


def _path(message: Message, name: str = "path") -> str:
    value = message.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{name} is required")
    return value


class FilesystemService:
    def __init__(self, registry: E2bRegistry) -> None:
        self._registry = registry

    def _files(self, sandbox: Sandbox) -> SandboxFiles:
        return self._registry.sandboxes.files(sandbox.id)

    async def stat(self, sandbox: Sandbox, message: Message) -> Message:
        files = self._files(sandbox)
        return {"entry": _entry(await _followed(files, await files.stat(_path(message))))}

    async def list_dir(self, sandbox: Sandbox, message: Message) -> Message:
        depth = message.get("depth") or 1  # proto3 leaves 0 out: not given
        if not isinstance(depth, int) or depth < 1:
            raise InvalidArgument(f"depth should be at least 1, got {depth!r}")
        depth = min(depth, MAX_DEPTH)
        files = self._files(sandbox)
        path = _path(message)
        found = await files.stat(path)
        if found.type != "dir":
            raise InvalidArgument(f"path {path} is not a directory")
        try:
            listed = await files.list(path, depth)
        except PayloadTooLarge as exc:  # what to change, not E2B's "rate limit" (resource_exhausted)
            raise InvalidArgument(exc.message) from None
        entries = sorted(listed, key=lambda e: e.path)
        return {"entries": [_entry(await _followed(files, e)) for e in entries]}

    async def make_dir(self, sandbox: Sandbox, message: Message) -> Message:
        files, path = self._files(sandbox), _path(message)
        with contextlib.suppress(NotFound):
            await files.stat(path)
            raise RpcError("already_exists", f"directory {path} already exists")
        return {"entry": _entry(await files.make_dir(path))}

    async def move(self, sandbox: Sandbox, message: Message) -> Message:
        moved = await self._files(sandbox).rename(_path(message, "source"), _path(message, "destination"))
        return {"entry": _entry(moved)}

    async def remove(self, sandbox: Sandbox, message: Message) -> Message:
        """Like `rm -rf`: a path that is already gone is not an error."""
        with contextlib.suppress(NotFound):
            await self._files(sandbox).remove(_path(message))
        return {}

    # -- watchers (sync SDK: create / poll / remove) ---------------------------------------------

    async def create_watcher(self, sandbox: Sandbox, message: Message) -> Message:
        extras = self._registry.extras(sandbox)
        if len(extras.watchers) >= MAX_WATCHERS:
            raise QuotaExceeded(f"a sandbox holds at most {MAX_WATCHERS} watchers; remove one first")
        watcher = Watcher(self._files(sandbox), _path(message), bool(message.get("recursive")))
        await watcher.start()
        extras.watchers[watcher.id] = watcher
        return {"watcherId": watcher.id}

    def _watcher(self, sandbox: Sandbox, message: Message) -> Watcher:
        watcher_id = message.get("watcherId")
        watcher = (
            self._registry.extras(sandbox).watchers.get(watcher_id) if isinstance(watcher_id, str) else None
        )
        if watcher is None:
            raise NotFound(f"watcher {watcher_id!r} not found")
        return watcher

    async def get_watcher_events(self, sandbox: Sandbox, message: Message) -> Message:
        return {"events": _events(await self._watcher(sandbox, message).changes())}

    async def remove_watcher(self, sandbox: Sandbox, message: Message) -> Message:
        watcher = self._watcher(sandbox, message)
        self._registry.extras(sandbox).watchers.pop(watcher.id, None)
        watcher.close()
        return {}

    # -- WatchDir (async SDK: a server stream) ---------------------------------------------------

    async def watch_dir(self, sandbox: Sandbox, message: Message) -> AsyncIterator[Message]:
        watcher = Watcher(self._files(sandbox), _path(message), bool(message.get("recursive")))
        await watcher.start()
        watcher.end_when(sandbox.stopping, "its sandbox stopped")
        return self._watch_stream(sandbox, watcher)

    async def _watch_stream(self, sandbox: Sandbox, watcher: Watcher) -> AsyncIterator[Message]:
        try:
            yield {"start": {}}  # WatchDirResponse's oneof sits at the top level
            while True:
                await watcher.wait(STREAM_KEEPALIVE_S)
                if sandbox.state != "running":
                    return  # (envd's stream ends with its sandbox)
                try:
                    events = await watcher.changes()
                except NotFound:
                    raise RpcError("not_found", "the watched directory was removed") from None
                for event in _events(events):
                    yield {"filesystem": event}
                if not events:
                    yield {"keepalive": {}}
        finally:
            watcher.close()
