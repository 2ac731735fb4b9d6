"""FileWatch: changes to a sandbox directory (and, recursively, its subdirectories), from inotify.

Each watched directory is opened through the sandbox's confined file access (`SandboxFiles.
open_dir`: resolved inside its root, as the sandbox user, so a directory the user may not read is
never watched) and the inotify watch is added on that open directory (`/proc/self/fd/N`): no path
the sandbox could swap for a symlink is ever resolved by root. The kernel then reports every change,
whoever makes it (the sandbox's processes or the files API), the moment it is made; a listing
compared every 0.2 s (this module's predecessor) missed a file made and removed in between and
walked the whole tree five times a second for each watcher.

Events name entries relative to the watched directory and have the kinds of E2B's envd (from
Go's fsnotify): `create` (made, or moved in), `write`, `remove`, `rename` (moved away: its new
name, if in the tree, comes as a `create`) and `chmod` (mode, owner or times changed). A write
through the files API (a temp file renamed over its target, so that readers never see half) is
reported as envd reports a write in place: `create` and `write` for a new file, `write` for one
it replaces; the temp file is never reported. A subdirectory made in a recursive watch is watched
once its `create` is read, and what it holds by then is reported as made (fsnotify loses it), so
`mkdir -p a/b && touch a/b/c` is seen whole. Events wait in a bounded queue; past
`MAX_PENDING` unread the watch drops them and says so (`overflowed`), as when the kernel's own
queue overflows. A watch ends (`ended`) when its directory is removed or moved, or its sandbox
stops (the kernel drops watches on an unmounted filesystem).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import struct
from collections import deque
from dataclasses import dataclass
from typing import Literal

from agentcell.errors import InvalidArgument, PayloadTooLarge, QuotaExceeded, Unavailable
from agentcell.server.sandbox.driver import WRITE_TEMP_PREFIX, FileStat, SandboxFiles

log = logging.getLogger(__name__)

FileEventKind = Literal["create", "write", "remove", "rename", "chmod"]

MAX_DEPTH = 16
"""levels below the watched directory that a recursive watch follows (as a listing's depth)"""
MAX_DIRECTORIES = 4096
"""directories one watch covers; those past it are not watched (logged)"""
MAX_PENDING = 10_000
"""events kept unread; past it the watch drops events and sets `overflowed`"""

IN_MODIFY, IN_ATTRIB = 0x2, 0x4
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_UNMOUNT, IN_Q_OVERFLOW, IN_IGNORED = 0x2000, 0x4000, 0x8000
IN_ONLYDIR, IN_EXCL_UNLINK, IN_ISDIR = 0x01000000, 0x04000000, 0x40000000
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_EXCL_UNLINK
)
_KINDS: tuple[tuple[int, FileEventKind], ...] = (
    (IN_CREATE | IN_MOVED_TO, "create"),
    (IN_MODIFY, "write"),
    (IN_DELETE, "remove"),
    (IN_MOVED_FROM, "rename"),
    (IN_ATTRIB, "chmod"),
)
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_READ_BYTES = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class FileEvent:
    name: str
    """the entry's path relative to the watched directory"""
    kind: FileEventKind


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One inotify event as the kernel wrote it."""

    wd: int
    mask: int
    cookie: int
    """pairs a move's two events"""
    name: str


def parse_events(buffer: bytes) -> list[RawEvent]:
    """The `struct inotify_event`s of one read (each name NUL-padded to its `len`)."""
    events: list[RawEvent] = []
    offset = 0
    while offset + _HEADER.size <= len(buffer):
        wd, mask, cookie, size = _HEADER.unpack_from(buffer, offset)
        start = offset + _HEADER.size
        name = buffer[start : start + size].split(b"\0", 1)[0]
        events.append(RawEvent(wd, mask, cookie, os.fsdecode(name)))
        offset = start + size
    return events


def event_kind(mask: int) -> FileEventKind | None:
    for bits, kind in _KINDS:
        if mask & bits:
            return kind
    return None


class FileWatch:
    """One watch (see the module docstring). Made by `open`; closed by its owner."""

    def __init__(self, files: SandboxFiles, path: str, recursive: bool) -> None:
        self._files = files
        self._root = path.rstrip("/") or "/"
        self._recursive = recursive
        self._loop = asyncio.get_running_loop()
        fd = int(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC))
        if fd < 0:
            raise _inotify_error("inotify_init1")
        self._fd = fd
        self._dirs: dict[int, str] = {}  # watch descriptor → its directory, relative ("" the root)
        self._names: dict[int, set[str]] = {}  # watch descriptor → the entries its directory holds
        self._write_move = -1  # the cookie of a files-API write's temp file being renamed, or -1
        self._pending: deque[FileEvent] = deque()
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # watches being added, and `end_when`'s
        self.overflowed = False
        self.ended: str | None = None
        """why the watch ended (its directory removed or moved, its sandbox stopped), or None"""
        self._loop.add_reader(fd, self._on_readable)

    @classmethod
    async def open(cls, files: SandboxFiles, path: str, *, recursive: bool = False) -> FileWatch:
        """Watch the directory `path` (and, `recursive`, those below it); raises NotFound,
        PermissionDenied, or InvalidArgument when `path` is not a directory."""
        stat = await files.stat(path)
        if stat.type != "dir":
            raise InvalidArgument(f"{path} is not a directory; watch a directory")
        watch = cls(files, stat.path, recursive)
        try:
            await (watch._add_tree() if recursive else watch._add("", report=False))
        except BaseException:
            watch.close()
            raise
        return watch

    @property
    def path(self) -> str:
        """the watched directory, absolute (as its sandbox sees it)"""
        return self._root

    def take(self) -> list[FileEvent]:
        """The events so far, oldest first; the queue is empty after."""
        self._on_readable()  # (what the kernel holds: the loop may not have read it yet)
        events = list(self._pending)
        self._pending.clear()
        self._ready.clear()
        return events

    async def wait(self, timeout_s: float) -> None:
        """Until an event is waiting or the watch ended, or `timeout_s` passed."""
        if self._pending or self.ended is not None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._ready.wait()
        except TimeoutError:
            pass

    def end_when(self, event: asyncio.Event, reason: str) -> None:
        """End the watch (`ended` = `reason`) once `event` is set (its sandbox stopping: the
        kernel says nothing while something else still holds the sandbox's filesystem)."""
        task = self._loop.create_task(self._end_on(event, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end_on(self, event: asyncio.Event, reason: str) -> None:
        await event.wait()
        self.end(reason)

    def end(self, reason: str) -> None:
        """The watch is over (`ended` = `reason`, unless it ended already): `wait` returns at once."""
        if self.ended is None:
            self.ended = reason
        self._ready.set()

    def close(self) -> None:
        if self._fd < 0:
            return
        for task in self._tasks:
            task.cancel()
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        self.end("closed")

    # --- watches --------------------------------------------------------------------------------

    async def _add(self, relative: str, *, report: bool) -> list[str]:
        """Watch one directory (relative to the root) through a confined open of it, then learn
        its entries (so that a write through the files API tells a file it replaces from one it
        makes): the subdirectories found, relative. With `report` (a directory made under a
        recursive watch, watched only once its `create` is read) the entries found are reported
        as made, so nothing made in it before its watch began goes unseen."""
        wd = await self._watch(relative)
        if wd is None:
            return []
        entries = await self._files.list(self._absolute(relative), 1)
        # An entry made since the watch began is in the listing, and its `create` in the kernel's
        # queue: read that first (no await until it is learnt), or it would be reported twice.
        self._on_readable()
        return self._learn(wd, relative, entries, report)

    async def _add_tree(self) -> None:
        """Watch the root and every folder below it, down to MAX_DEPTH levels. One listing of the
        tree names the folders and their entries (one per folder took three times as long); a
        folder that cannot be watched (gone again, unreadable) is left out."""
        root = await self._watch("")
        try:
            listed = await self._files.list(self._root, MAX_DEPTH)
        except PayloadTooLarge as exc:
            raise PayloadTooLarge(
                f"{self._root} is too large to watch recursively ({exc}); watch a folder in it"
            ) from None
        prefix = self._root.rstrip("/") + "/"
        held: dict[str, list[FileStat]] = {"": []}
        for entry in listed:
            relative = entry.path.removeprefix(prefix)
            held.setdefault(relative.rpartition("/")[0], []).append(entry)
            if entry.type == "dir":
                held.setdefault(relative, [])
        if root is not None:
            self._learn(root, "", held.pop(""), report=False)
        for relative, entries in held.items():
            try:
                wd = await self._watch(relative)
            except Exception as exc:
                log.debug("watch of %s: cannot watch %s: %s", self._root, relative, exc)
                continue
            if wd is not None:
                self._learn(wd, relative, entries, report=False)

    async def _watch(self, relative: str) -> int | None:
        """Add the watch of one folder (relative to the root) through a confined open of it: its
        watch descriptor, or None when it is not watched (the bound, or the watch closed)."""
        if relative and len(self._dirs) >= MAX_DIRECTORIES:
            log.info("watch of %s: %s not watched (over %d)", self._root, relative, MAX_DIRECTORIES)
            return None
        fd = await self._files.open_dir(self._absolute(relative))
        try:
            if self._fd < 0:
                return None
            wd = int(_libc.inotify_add_watch(self._fd, f"/proc/self/fd/{fd}".encode(), WATCH_MASK))
            if wd < 0:
                raise _inotify_error("inotify_add_watch")
        finally:
            os.close(fd)
        self._dirs[wd] = relative
        self._names.setdefault(wd, set())
        return wd

    def _learn(self, wd: int, relative: str, entries: list[FileStat], report: bool) -> list[str]:
        """Remember a watched folder's entries (reported as made when `report`): its subfolders."""
        names = self._names[wd]
        subdirectories: list[str] = []
        for entry in entries:
            if entry.name in names or entry.name.startswith(WRITE_TEMP_PREFIX):
                continue
            names.add(entry.name)
            name = _joined(relative, entry.name)
            if entry.type == "dir":
                subdirectories.append(name)
            if report:
                self._queue(FileEvent(name, "create"))
                if entry.type == "file" and entry.size:
                    self._queue(FileEvent(name, "write"))
        if report and self._pending:
            self._ready.set()
        return subdirectories

    def _add_later(self, relative: str) -> None:
        """Watch a directory made (or moved in) under a recursive watch, from now on."""
        if relative.count("/") >= MAX_DEPTH - 1:
            return
        task = self._loop.create_task(self._add_reporting(relative))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add_reporting(self, relative: str) -> None:
        try:
            subdirectories = await self._add(relative, report=True)
        except Exception as exc:  # (gone again, or made unreadable: nothing in it to report)
            log.debug("watch of %s: cannot watch %s: %s", self._root, relative, exc)
            return
        for name in subdirectories:
            self._add_later(name)

    def _absolute(self, relative: str) -> str:
        return f"{self._root.rstrip('/')}/{relative}" if relative else self._root

    # --- events ---------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        while self._fd >= 0:
            try:
                buffer = os.read(self._fd, _READ_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("watch of %s: reading inotify failed: %s", self._root, exc)
                self.close()
                return
            for event in parse_events(buffer):
                self._on_event(event)
            self._ready.set()

    def _on_event(self, event: RawEvent) -> None:
        write_move, self._write_move = self._write_move, -1
        if event.mask & IN_Q_OVERFLOW:
            self.overflowed = True
            return
        directory = self._dirs.get(event.wd)
        if directory is None:
            return
        if event.mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
            self._on_directory_gone(event, directory)
            return
        if event.name.startswith(WRITE_TEMP_PREFIX):  # a files-API write's temp file: not reported
            if event.mask & IN_MOVED_FROM:  # but renamed over its target, next event, it is the write
                self._write_move = event.cookie
            return
        kind = event_kind(event.mask)
        if kind is None or not event.name:
            return
        names = self._names[event.wd]
        name = _joined(directory, event.name)
        if kind == "create" and event.mask & IN_MOVED_TO and event.cookie == write_move:
            if event.name not in names:
                names.add(event.name)
                self._queue(FileEvent(name, "create"))
            self._queue(FileEvent(name, "write"))  # (as a write in place would show: envd's order)
            return
        if kind == "create":
            names.add(event.name)
        elif kind in ("remove", "rename"):
            names.discard(event.name)
        self._queue(FileEvent(name, kind))
        if self._recursive and kind == "create" and event.mask & IN_ISDIR:
            self._add_later(name)

    def _on_directory_gone(self, event: RawEvent, directory: str) -> None:
        """Its watch was dropped (IN_IGNORED), or is about to be: the watch ends with the root."""
        if event.mask & IN_IGNORED:
            del self._dirs[event.wd]
            self._names.pop(event.wd, None)
        elif directory and event.mask & IN_MOVE_SELF:  # its old name is stale; moved within the
            _libc.inotify_rm_watch(self._fd, event.wd)  # tree, it is watched again by its `create`
        if not directory:
            stopped = event.mask & IN_UNMOUNT
            self.end("its sandbox stopped" if stopped else "its directory was removed or moved")

    def _queue(self, event: FileEvent) -> None:
        pending = self._pending
        if pending and pending[-1] == event and event.kind == "write":
            return  # (a write in many pieces: one event until something else happens)
        if len(pending) >= MAX_PENDING:
            self.overflowed = True
            return
        pending.append(event)


def _joined(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _inotify_error(call: str) -> Exception:
    code = ctypes.get_errno()
    if code in (errno.EMFILE, errno.ENOSPC, errno.ENOMEM):
        reason = os.strerror(code)
        return QuotaExceeded(f"the node cannot watch more directories now ({call}: {reason}); stop a watch")
    return Unavailable(f"{call} failed: {os.strerror(code)}")
