"""Reading a workspace that its sandbox may be changing under us, as the host's root.

Every step goes through directory file descriptors and `*at` calls, one path component at a
time, with O_NOFOLLOW: a symlink is recorded as a link and never followed, a directory swapped for
a link between two calls is refused by the kernel, and nothing outside the root's mount is read
(a change of st_dev stops the walk). FIFOs, sockets and devices are counted and skipped, and so
are entries whose path is longer than a snapshot may hold (MAX_PATH_BYTES: a program can make
them with relative paths), so that one such entry never makes the whole snapshot unrestorable.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from agentcell.errors import Conflict, InvalidArgument
from agentcell.server.storage.manifest import MAX_ENTRIES, MAX_MANIFEST_BYTES, MAX_PATH_BYTES, byte_length

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_DEPTH = 512
MAX_TEXT_BYTES = MAX_MANIFEST_BYTES // 4
"""paths and link targets of one walk together (escaped in the manifest's JSON, they grow)"""


@dataclass(frozen=True, slots=True)
class Found:
    """One entry seen by the walk (no content yet)."""

    path: str
    kind: str
    mode: int
    size: int
    mtime_ns: int
    target: str = ""
    inode: int = 0  # a regular file with more than one link: its inode number (else 0)
    ctime_ns: int = 0  # a regular file's inode change time (its owner cannot set it, unlike mtime)


@dataclass(slots=True)
class Scan:
    entries: list[Found]
    skipped: int
    root_dev: int
    listed: int = 0
    """directory entries listed and not yet visited"""
    text_bytes: int = 0
    """bytes of the paths and link targets found"""

    def room(self) -> int:
        """How many more directory entries the walk may list."""
        return MAX_ENTRIES - len(self.entries) - self.listed

    def count(self, found: Found) -> None:
        self.entries.append(found)
        self.text_bytes += byte_length(found.path) + byte_length(found.target)
        if self.text_bytes > MAX_TEXT_BYTES:
            raise Conflict(
                f"the paths and link targets of the workspace add up to more than {MAX_TEXT_BYTES >> 20} "
                "MiB, more than a snapshot keeps: delete (or exclude) some of its files and try again"
            )


class Excludes:
    """Exclude globs: a bare name (`node_modules`, `*.pyc`) matches an entry's name at any depth;
    a pattern with '/' (`build/out`, `data/*.tmp`) matches the path relative to the root."""

    def __init__(self, patterns: Sequence[str]) -> None:
        names: list[str] = []
        paths: list[str] = []
        for pattern in patterns:
            if not isinstance(pattern, str) or not pattern.strip("/") or "\0" in pattern:
                raise InvalidArgument(f"exclude patterns must be non-empty globs, got {pattern!r}")
            (paths if "/" in pattern.strip("/") else names).append(pattern.strip("/"))
        self._names, self._paths = tuple(names), tuple(paths)

    def matches(self, path: str, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self._names) or any(
            fnmatch.fnmatchcase(path, p) for p in self._paths
        )


def open_root(dir_fd: int) -> int:
    """A readable directory fd for the workspace root (the caller's fd may be O_PATH)."""
    return os.open(".", DIR_FLAGS, dir_fd=dir_fd)


def scan(dir_fd: int, excludes: Excludes) -> Scan:
    """Every entry under `dir_fd`, parents before children, excluded directories never entered.

    Depth-first with one open fd per level (never one per sibling); entries deeper than
    MAX_DEPTH levels are skipped rather than exhausting file descriptors, and entries whose path
    is longer than MAX_PATH_BYTES are skipped (with their subtree) rather than stored unrestorable.
    """
    root = open_root(dir_fd)
    result = Scan([], 0, os.fstat(root).st_dev)
    stack: list[tuple[str, int, list[os.DirEntry[str]]]] = []
    try:
        stack.append(("", root, []))  # on the stack before its listing: closed if that fails
        stack[-1] = ("", root, _listing(root, result))
        while stack:
            rel, fd, items = stack[-1]
            if not items:
                os.close(fd)
                stack.pop()
                continue
            item = items.pop()
            result.listed -= 1
            path = f"{rel}/{item.name}" if rel else item.name
            if excludes.matches(path, item.name):
                continue
            if byte_length(path) > MAX_PATH_BYTES:  # a snapshot could not hold it, nor its subtree
                result.skipped += 1
                continue
            child = _visit(fd, item, path, result)
            if child is not None and len(stack) >= MAX_DEPTH:
                os.close(child)
                result.skipped += 1
            elif child is not None:
                stack.append((path, child, []))  # as the root: closed if its listing fails
                stack[-1] = (path, child, _listing(child, result))
    finally:
        for _, fd, _ in stack:
            os.close(fd)
    return result


def _listing(fd: int, result: Scan) -> list[os.DirEntry[str]]:
    """A directory's entries, sorted by name in reverse (so that `pop()` yields them in order).
    Raises Conflict as soon as the walk holds more entries than a snapshot keeps (MAX_ENTRIES):
    before it lists them all, so that a directory of millions of files costs no memory."""
    items: list[os.DirEntry[str]] = []
    room = result.room()
    with os.scandir(fd) as listing:
        for item in listing:
            if len(items) >= room:
                raise Conflict(
                    f"the workspace holds more than {MAX_ENTRIES} files, directories and links, "
                    "more than a snapshot keeps: delete (or exclude) some of them and try again"
                )
            items.append(item)
    result.listed += len(items)
    return sorted(items, key=lambda item: item.name, reverse=True)


def _visit(parent: int, item: os.DirEntry[str], path: str, result: Scan) -> int | None:
    """Record one entry; returns an open fd when it is a directory to descend into."""
    try:
        st = item.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(item.name, dir_fd=parent)
            result.count(Found(path, "l", 0o777, 0, st.st_mtime_ns, target))
        elif stat.S_ISDIR(st.st_mode) and st.st_dev == result.root_dev:
            child = os.open(item.name, DIR_FLAGS, dir_fd=parent)
            if _same_inode(os.fstat(child), st):
                result.count(Found(path, "d", stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns))
                return child
            os.close(child)
            result.skipped += 1
        elif stat.S_ISREG(st.st_mode) and st.st_dev == result.root_dev:
            inode = st.st_ino if st.st_nlink > 1 else 0
            mode = stat.S_IMODE(st.st_mode)
            result.count(
                Found(path, "f", mode, st.st_size, st.st_mtime_ns, inode=inode, ctime_ns=st.st_ctime_ns)
            )
        else:
            result.skipped += 1
    except OSError as exc:
        if not _vanished(exc):
            raise
        result.skipped += 1
    return None


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _vanished(exc: OSError) -> bool:
    """Errors that mean the sandbox changed the entry under us (not a host problem)."""
    return exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.ENXIO)


class DirCursor:
    """Opens directories of a tree by relative path from its root, one component at a time with
    O_NOFOLLOW, keeping an fd for each component of the last path: callers visit paths in sorted
    (depth-first) order, so the next path shares most of its parents and only the components that
    differ are opened (a file 400 levels down costs one open, not 400)."""

    def __init__(self, root_fd: int) -> None:
        self.root = root_fd
        self._names: list[str] = []
        self._fds: list[int] = []  # _fds[i]: the directory at _names[: i + 1]

    def at(self, path: str) -> int:
        """An fd of the directory at `path` ("" is the root); valid until the next call."""
        names = path.split("/") if path else []
        common = 0
        for have, want in zip(self._names, names, strict=False):
            if have != want:
                break
            common += 1
        while len(self._fds) > common:
            os.close(self._fds.pop())
            self._names.pop()
        fd = self._fds[-1] if self._fds else self.root
        for name in names[common:]:
            fd = os.open(name, DIR_FLAGS, dir_fd=fd)
            self._fds.append(fd)
            self._names.append(name)
        return fd

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())
        self._names.clear()


class Reader:
    """Opens the regular files of one scanned tree by relative path, safely (see DirCursor)."""

    def __init__(self, dir_fd: int, root_dev: int) -> None:
        self._cursor = DirCursor(open_root(dir_fd))
        self._root_dev = root_dev

    def open_file(self, path: str) -> tuple[int, os.stat_result] | None:
        """The regular file at `path` and its fstat, or None if it vanished or changed type."""
        parent, _, name = path.rpartition("/")
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=self._cursor.at(parent))
        except OSError as exc:
            if _vanished(exc):
                return None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_dev != self._root_dev:
            os.close(fd)
            return None
        return fd, st

    def close(self) -> None:
        self._cursor.close()
        os.close(self._cursor.root)
