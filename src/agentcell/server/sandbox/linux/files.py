"""Confined file access into one sandbox's root, performed with the sandbox user's privileges.

`RootedFiles` is the node-side `SandboxFiles`. Two walls keep it inside:

* **Where**: every path is resolved by `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from a
  dirfd of the sandbox root, so absolute symlinks, relative `../..` chains and `/proc` magic links
  resolve inside the root or fail; final components are then handled with `*at()` calls on the
  parent dirfd that do not follow them. Paths containing `..` are refused outright.
* **As whom**: the work runs in pool threads that switch their own fsuid/fsgid to the sandbox
  user, drop their supplementary groups and effective capabilities for the call and restore them
  after (all per-thread in the kernel), so root's privileges never touch the sandbox's files and
  new files belong to the sandbox user.

The pool is shared by every sandbox of the server, and one sandbox holds at most
`SANDBOX_POOL_SLOTS` of its threads at a time (the rest of its calls wait their turn), so a sandbox
that floods the pool with deep listings cannot stall another sandbox's file calls.

Names are `str` as `os` gives them: bytes that are not UTF-8 are kept as surrogate escapes, so
every name read here can be handed back and reaches the same file. Making them valid text for a
wire format is the API layer's job (`agentcell.protocol.files.wire_text`); only error messages
are made valid here.

Every OSError becomes a domain error in `translate_os_error`, and nowhere else.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import functools
import logging
import os
import secrets
import stat
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from agentcell.errors import (
    AgentcellError,
    Conflict,
    Internal,
    InvalidArgument,
    NotFound,
    NotRunning,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    Unavailable,
)
from agentcell.protocol.files import wire_text
from agentcell.server.sandbox.driver import SANDBOX_HOME, WRITE_TEMP_PREFIX, FileStat, FileType
from agentcell.server.sandbox.linux.fscalls import (
    IN_ROOT,
    PROC_SUPER_MAGIC,
    RESOLVE_NO_SYMLINKS,
    as_sandbox_user,
    filesystem_type,
    openat2,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_CHUNK_BYTES = 1 << 20
MAX_LIST_DEPTH = 16
MAX_REMOVE_FDS = 64
"""directories a recursive remove holds open at once, however deep the tree"""
POOL_WORKERS = 16
SANDBOX_POOL_SLOTS = 4
"""Pool threads one sandbox may hold at once: a quarter of the pool, so that however many calls
one sandbox (or three) sends, the others still find a free thread."""

_NEW_FILE_MODE = 0o644
_NEW_DIR_MODE = 0o755

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def shared_executor() -> ThreadPoolExecutor:
    """The module's worker pool, created on first use (never at import)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(POOL_WORKERS, thread_name_prefix="acell-files")
        return _pool


class _PoolSlots:
    """The pool threads one sandbox root holds, at most SANDBOX_POOL_SLOTS. Shared by every
    RootedFiles of the same root on the same loop (a driver may make one per call), and dropped
    with the last of them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.semaphore = asyncio.Semaphore(SANDBOX_POOL_SLOTS)


_slots: weakref.WeakValueDictionary[tuple[str, asyncio.AbstractEventLoop], _PoolSlots] = (
    weakref.WeakValueDictionary()
)


def _slots_for(root_path: str, loop: asyncio.AbstractEventLoop) -> _PoolSlots:
    with _pool_lock:
        slots = _slots.get((root_path, loop))
        if slots is None:
            slots = _slots[root_path, loop] = _PoolSlots(loop)
        return slots


# --- errors ---------------------------------------------------------------------------------------

_LARGER_DISK = (
    "delete files, or use a larger disk_mb; the disk is held in memory, so it is never larger than memory_mb"
)
_ERRORS: dict[int, tuple[type[AgentcellError], str]] = {
    errno.ENOENT: (NotFound, "no such file or directory: {path}"),
    errno.ENOTDIR: (InvalidArgument, "expected a directory, but a component of {path} is not one"),
    errno.EISDIR: (InvalidArgument, "expected a file, but {path} is a directory"),
    errno.EACCES: (PermissionDenied, "the sandbox user may not {action} {path}"),
    errno.EPERM: (PermissionDenied, "the sandbox user may not {action} {path}"),
    errno.EROFS: (PermissionDenied, "the sandbox user may not {action} {path}"),
    errno.ENOSPC: (QuotaExceeded, "the sandbox disk is full ({path}): " + _LARGER_DISK),
    errno.EDQUOT: (QuotaExceeded, "the sandbox disk is full ({path}): " + _LARGER_DISK),
    errno.EFBIG: (QuotaExceeded, "{path} would exceed the largest file the sandbox allows"),
    errno.EXDEV: (InvalidArgument, "{path} leads across sandbox mounts or out of the sandbox root"),
    errno.ELOOP: (InvalidArgument, "too many symbolic links, or a /proc magic link, in {path}"),
    errno.ENAMETOOLONG: (InvalidArgument, "{path} is too long"),
    errno.ENXIO: (InvalidArgument, "expected a regular file, but {path} is a socket or device"),
    errno.EINVAL: (InvalidArgument, "cannot {action} {path} (e.g. a directory cannot move into itself)"),
    errno.EEXIST: (Conflict, "{path} already exists"),
    errno.ENOTEMPTY: (Conflict, "directory {path} is not empty"),
    errno.EBUSY: (Conflict, "{path} is in use (a mount point cannot be removed or replaced)"),
}


class _PathError(OSError):
    """An OSError pinned to one of the paths of a two-path operation (its filename)."""


def translate_os_error(err: OSError, path: str, action: str) -> AgentcellError:
    """The one place an errno becomes a domain error. `path` is the in-sandbox path shown."""
    if isinstance(err, _PathError) and isinstance(err.filename, str):
        path = err.filename
    path = wire_text(path)  # a name read from the sandbox may not be valid UTF-8
    if err.errno == errno.EAGAIN:
        return Unavailable(f"the sandbox filesystem was busy resolving {path}; retry", retry_after_s=0.1)
    kind, template = _ERRORS.get(err.errno or 0, (Internal, ""))
    if kind is Internal:
        name = errno.errorcode.get(err.errno or 0, str(err.errno))
        return Internal(f"could not {action} {path}: {name}")
    return kind(template.format(path=path, action=action))


@contextlib.contextmanager
def _blaming(path: str) -> Iterator[None]:
    """Attribute OSErrors raised inside to `path` (rename has two paths to blame)."""
    try:
        yield
    except _PathError:
        raise
    except OSError as err:
        raise _PathError(err.errno, err.strerror, path) from err


# --- paths ----------------------------------------------------------------------------------------


def parse_path(path: str) -> tuple[str, ...]:
    """Split an in-sandbox path into components; relative paths start at the sandbox home."""
    if "\0" in path:
        raise InvalidArgument("path must not contain NUL bytes")
    if not path:
        raise InvalidArgument("path must not be empty")
    absolute = path if path.startswith("/") else f"{SANDBOX_HOME}/{path}"
    parts = tuple(part for part in absolute.split("/") if part not in ("", "."))
    if ".." in parts:
        raise InvalidArgument("path must not contain '..'")
    return parts


def _shown(parts: Sequence[str]) -> str:
    return "/" + "/".join(parts)


def _below_root(path: str) -> tuple[str, ...]:
    parts = parse_path(path)
    if not parts:
        raise InvalidArgument("path must name something below /, not the sandbox root itself")
    return parts


def _file_path(path: str) -> tuple[str, ...]:
    """A path to write a file at: `dir/` or `dir/.` names a directory, never a file to make."""
    parts = _below_root(path)
    if path.rsplit("/", 1)[-1] in ("", "."):
        raise InvalidArgument(f"a file path may not end with '/' or '/.', got {path!r}: name the file")
    return parts


# --- filesystem work (runs in pool threads, as the sandbox user) ---------------------------------


def _open_dir(root: int, parts: Sequence[str], flags: int = os.O_PATH) -> int:
    return openat2(root, "/".join(parts) or ".", flags | os.O_DIRECTORY)


def _make_dirs(root: int, parts: Sequence[str]) -> int:
    """mkdir -p; returns an O_PATH fd of the last directory. Each level is resolved from the root
    again, so a component that is (or is swapped for) a symlink still resolves inside it."""
    for depth, name in enumerate(parts):
        parent = _open_dir(root, parts[:depth])
        try:
            os.mkdir(name, _NEW_DIR_MODE, dir_fd=parent)
        except FileExistsError:
            pass
        finally:
            os.close(parent)
    return _open_dir(root, parts)


def _open_parent(root: int, parts: Sequence[str], create: bool = False) -> int:
    try:
        return _open_dir(root, parts[:-1])
    except FileNotFoundError:
        if not create:
            raise
    return _make_dirs(root, parts[:-1])


def _type_of(mode: int) -> FileType:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    return "symlink" if stat.S_ISLNK(mode) else "other"


def _file_stat(path: str, st: os.stat_result, target: str | None = None) -> FileStat:
    return FileStat(
        path=path,
        name=path.rsplit("/", 1)[-1] or "/",
        type=_type_of(st.st_mode),
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        mtime=datetime.fromtimestamp(st.st_mtime, tz=UTC),
        symlink_target=target,
    )


def _lstat_at(dir_fd: int, name: str, path: str) -> FileStat:
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    target = os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else None
    return _file_stat(path, st, target)


def _stat(root: int, parts: Sequence[str]) -> FileStat:
    if not parts:
        return _file_stat("/", os.fstat(root))
    parent = _open_dir(root, parts[:-1])
    try:
        return _lstat_at(parent, parts[-1], _shown(parts))
    finally:
        os.close(parent)


def _scan(
    base: int, rel: tuple[str, ...], prefix: str, budget: int
) -> Iterator[tuple[FileStat, tuple[str, ...]]]:
    """Entries of one directory under the listed base, sorted, with their base-relative parts.
    Descendants are opened with RESOLVE_NO_SYMLINKS: a listing never follows a symlinked dir.
    Raises _OverBudget as soon as the directory holds more than `budget` names: before any
    is stat'ed, so a huge directory costs at most `budget` names of memory."""
    fd = openat2(base, "/".join(rel) or ".", os.O_RDONLY | os.O_DIRECTORY, IN_ROOT | RESOLVE_NO_SYMLINKS)
    try:
        names = sorted(_names(fd, budget))
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # deleted while we listed
                yield _lstat_at(fd, name, f"{prefix.rstrip('/')}/{name}"), (*rel, name)
    finally:
        os.close(fd)


class _OverBudget(Exception):
    """A listing found more entries than it may return."""


def _names(fd: int, budget: int) -> list[str]:
    names: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if len(names) == budget:
                raise _OverBudget
            names.append(entry.name)
    return names


def _list(root: int, parts: Sequence[str], depth: int, max_entries: int) -> list[FileStat]:
    """Breadth first: every entry of one level comes before any of the next."""
    base = _open_listed(root, parts)
    found: list[FileStat] = []
    try:
        level: list[tuple[str, ...]] = [()]
        for _ in range(depth):
            below: list[tuple[str, ...]] = []
            for rel in level:
                prefix, budget = _shown((*parts, *rel)), max_entries - len(found)
                found.extend(_list_level(base, rel, prefix, below, budget, first=not rel))
            level = below
        return found
    except _OverBudget:
        advice = "list less deep" if depth > 1 else "list its subdirectories, or run `ls` as a command"
        raise PayloadTooLarge(f"{_shown(parts)} holds over {max_entries} entries; {advice}") from None
    finally:
        os.close(base)


def _open_listed(root: int, parts: Sequence[str]) -> int:
    """The directory to list; a path that names something else is refused saying what it is."""
    try:
        return _open_dir(root, parts, os.O_RDONLY)
    except NotADirectoryError:
        fd = openat2(root, "/".join(parts) or ".", os.O_PATH)  # fails if a component is the culprit
        try:
            kind = _kind(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        raise InvalidArgument(f"expected a directory, but {wire_text(_shown(parts))} is {kind}") from None


def _list_level(
    base: int, rel: tuple[str, ...], prefix: str, below: list[tuple[str, ...]], budget: int, first: bool
) -> list[FileStat]:
    """One directory's entries; subdirectories are queued in `below`. A subdirectory the user may
    not read, or that vanished or turned into a symlink, is listed but not descended into."""
    try:
        scanned = list(_scan(base, rel, prefix, budget))
    except OSError:
        if first:
            raise
        return []
    below.extend(sub for entry, sub in scanned if entry.type == "dir")
    return [entry for entry, _ in scanned]


def _open_regular(root: int, parts: Sequence[str]) -> int:
    """Open a regular file to read. What the path names is seen on an O_PATH fd, which opens
    nothing: a FIFO, terminal or device is refused without the side effects of opening it (a
    FIFO's waiting writer let through; a terminal that no session controls becoming the server's
    controlling terminal, whose hangup would then kill the server). The file is then opened
    through that fd, so it is the one checked."""
    path_fd = openat2(root, "/".join(parts) or ".", os.O_PATH)
    try:
        mode = os.fstat(path_fd).st_mode
        if not stat.S_ISREG(mode):
            raise InvalidArgument(f"expected a regular file, but {wire_text(_shown(parts))} is {_kind(mode)}")
        if filesystem_type(path_fd) == PROC_SUPER_MAGIC:
            raise InvalidArgument(_PROC_IS_THE_READERS.format(path=wire_text(_shown(parts))))
        return os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(path_fd)


_PROC_IS_THE_READERS = (
    "{path} is a /proc file, which shows the process that reads it (through this API, the server,"
    " not the sandbox): read it with a command, e.g. `cat {path}`"
)


def _kind(mode: int) -> str:
    kinds = {
        stat.S_IFREG: "a regular file",
        stat.S_IFDIR: "a directory",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFLNK: "a symbolic link",
    }
    return kinds.get(stat.S_IFMT(mode), "not a regular file")


def _make_dir(root: int, parts: Sequence[str]) -> FileStat:
    try:
        fd = _make_dirs(root, parts)
    except NotADirectoryError:
        _refuse_non_dir(root, parts)
        raise
    try:
        return _file_stat(_shown(parts), os.fstat(fd))
    finally:
        os.close(fd)


def _refuse_non_dir(root: int, parts: Sequence[str]) -> None:
    """Conflict when the path itself exists as something other than a directory."""
    fd = openat2(root, "/".join(parts), os.O_PATH)
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise Conflict(f"{_shown(parts)} already exists and is not a directory")
    finally:
        os.close(fd)


@dataclass(slots=True)
class _Doomed:
    """A directory being emptied by `_remove_tree`. Its fd is closed (-1) while it sits deep in
    the stack, and reopened through its child's '..' when the removal climbs back to it."""

    name: str
    fd: int
    identity: tuple[int, int]
    subdirs: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _open_doomed(parent_fd: int, name: str) -> _Doomed:
    """Open a directory without following it and unlink everything in it but subdirectories."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
    try:
        st = os.fstat(fd)
        doomed = _Doomed(name, fd, (st.st_dev, st.st_ino))
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    doomed.subdirs.append(entry.name)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=fd)
    except BaseException:
        os.close(fd)
        raise
    return doomed


def _reopen_parent(parent: _Doomed, child: _Doomed) -> None:
    """Give a closed `parent` its fd back through `child`'s '..', if that is still the directory
    the removal came down through (the sandbox may move directories while it runs)."""
    if parent.fd >= 0:
        return
    fd = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=child.fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != parent.identity:
        os.close(fd)
        raise Conflict(
            "the tree changed while it was being removed (a directory in it moved); remove it again"
        )
    parent.fd = fd


def _remove_tree(parent_fd: int, name: str) -> None:
    """rm -r with an explicit stack (a sandbox can nest deeper than Python's recursion limit) and
    without following symlinks: each directory is opened O_NOFOLLOW relative to its parent. At
    most MAX_REMOVE_FDS directories are open at once however deep the tree: the server's fds are
    shared by every sandbox."""
    stack = [_open_doomed(parent_fd, name)]
    try:
        while stack:
            top = stack[-1]
            if top.subdirs:
                stack.append(_open_doomed(top.fd, top.subdirs.pop()))
                if len(stack) > MAX_REMOVE_FDS:
                    stack[-MAX_REMOVE_FDS - 1].close()
                continue
            stack.pop()
            if stack:
                _reopen_parent(stack[-1], top)
            top.close()
            os.rmdir(top.name, dir_fd=stack[-1].fd if stack else parent_fd)
    finally:
        for doomed in stack:
            doomed.close()


def _remove(root: int, parts: Sequence[str]) -> None:
    parent = _open_parent(root, parts)
    try:
        st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            _remove_tree(parent, parts[-1])
        else:
            os.unlink(parts[-1], dir_fd=parent)
    finally:
        os.close(parent)


def _rename(root: int, src: Sequence[str], dst: Sequence[str]) -> FileStat:
    with _blaming(_shown(src)):
        src_dir = _open_parent(root, src)
    try:
        with _blaming(_shown(src)):
            os.stat(src[-1], dir_fd=src_dir, follow_symlinks=False)
        with _blaming(_shown(dst)):
            dst_dir = _open_parent(root, dst, create=True)
        try:
            # rename(2) itself fails for either path (or both): the error names the two
            os.rename(src[-1], dst[-1], src_dir_fd=src_dir, dst_dir_fd=dst_dir)
            with _blaming(_shown(dst)):
                return _lstat_at(dst_dir, dst[-1], _shown(dst))
        finally:
            os.close(dst_dir)
    finally:
        os.close(src_dir)


@dataclass(slots=True)
class _PendingWrite:
    """A temp file being filled beside its target; renamed over the target on commit."""

    dir_fd: int
    temp_name: str
    name: str
    fd: int

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            if fd >= 0:
                os.close(fd)
        self.fd = self.dir_fd = -1


def _begin_write(root: int, parts: Sequence[str]) -> _PendingWrite:
    dir_fd = _open_parent(root, parts, create=True)
    pending = _PendingWrite(dir_fd, f"{WRITE_TEMP_PREFIX}{secrets.token_hex(8)}.tmp", parts[-1], -1)
    try:
        mode = _replacement_mode(dir_fd, parts[-1], _shown(parts))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        pending.fd = os.open(pending.temp_name, flags, mode, dir_fd=dir_fd)
        os.fchmod(pending.fd, mode)  # the server's umask must not decide the sandbox file's mode
    except BaseException:
        _abort_write(pending)
        raise
    return pending


def _replacement_mode(dir_fd: int, name: str, path: str) -> int:
    """A replaced regular file keeps its permission bits (a script stays executable)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return _NEW_FILE_MODE
    if stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"expected a file, but {path} is a directory")
    return stat.S_IMODE(st.st_mode) & 0o777 if stat.S_ISREG(st.st_mode) else _NEW_FILE_MODE


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _commit_write(pending: _PendingWrite, fsync: bool) -> os.stat_result:
    if fsync:
        os.fsync(pending.fd)
    st = os.fstat(pending.fd)
    # rename replaces the final component itself: a symlink there is replaced, never written through
    os.rename(pending.temp_name, pending.name, src_dir_fd=pending.dir_fd, dst_dir_fd=pending.dir_fd)
    pending.close()
    return st


def _abort_write(pending: _PendingWrite) -> None:
    try:
        if pending.fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pending.temp_name, dir_fd=pending.dir_fd)
    finally:
        pending.close()


# --- the async face -------------------------------------------------------------------------------


async def _settle(future: asyncio.Future[T]) -> bool:
    """Wait until a thread job has finished, even through cancellation; True if cancelled.

    A running job cannot be stopped, and abandoning it would orphan the fd or temp file it makes
    (the same choice as anyio's to_thread.run_sync)."""
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


class RootedFiles:
    """`SandboxFiles` over the directory `root_path` (in production `/proc/<init pid>/root`),
    acting as uid/gid (None: as the server itself, for the fake driver).

    Holds no fd between calls: each call opens the root afresh, with the server's privileges
    (reaching /proc/<pid>/root needs them), and checks it is still the directory it first saw,
    so a recycled pid cannot turn these calls onto another process's root.
    """

    def __init__(
        self,
        root_path: str,
        uid: int | None,
        gid: int | None,
        *,
        executor: Executor | None = None,
        fsync: bool = False,
        max_list_entries: int = 100_000,
    ) -> None:
        if (uid is None) != (gid is None):
            raise ValueError("uid and gid must be given together")
        self._root_path = root_path
        self._ids = None if uid is None or gid is None else (uid, gid)
        self._executor = executor
        self._fsync = fsync
        self._max_list_entries = max_list_entries
        self._root_identity: tuple[int, int] | None = None
        self._identity_lock = threading.Lock()
        self._slots: _PoolSlots | None = None

    @property
    def owner(self) -> tuple[int, int] | None:
        return self._ids

    async def open_dir(self, path: str) -> int:
        parts = parse_path(path)
        flags = os.O_RDONLY | os.O_CLOEXEC
        shown = _shown(parts)
        return await self._run(lambda root: _open_dir(root, parts, flags), shown, "open", undo=os.close)

    async def stat(self, path: str) -> FileStat:
        parts = parse_path(path)
        return await self._run(lambda root: _stat(root, parts), _shown(parts), "stat")

    async def list(self, path: str, depth: int = 1) -> builtins.list[FileStat]:
        if not 1 <= depth <= MAX_LIST_DEPTH:
            raise InvalidArgument(f"depth must be between 1 and {MAX_LIST_DEPTH}, got {depth}")
        parts = parse_path(path)
        return await self._run(
            lambda root: _list(root, parts, depth, self._max_list_entries), _shown(parts), "list"
        )

    async def read(self, path: str, chunk_bytes: int = MAX_CHUNK_BYTES) -> AsyncGenerator[bytes, None]:
        if chunk_bytes < 1:
            raise InvalidArgument(f"chunk_bytes must be positive, got {chunk_bytes}")
        parts, size = parse_path(path), min(chunk_bytes, MAX_CHUNK_BYTES)
        shown = _shown(parts)
        fd = await self._run(lambda root: _open_regular(root, parts), shown, "read", undo=os.close)
        try:
            while chunk := await self._call(functools.partial(os.read, fd, size), shown, "read"):
                yield chunk
        finally:
            os.close(fd)  # not awaited: an async generator may be closing because its loop is

    async def write(self, path: str, chunks: AsyncIterable[bytes]) -> FileStat:
        parts = _file_path(path)
        shown = _shown(parts)
        pending = await self._run(lambda root: _begin_write(root, parts), shown, "write", undo=_abort_write)
        try:
            async for chunk in chunks:
                if chunk:
                    await self._call(functools.partial(_write_all, pending.fd, chunk), shown, "write")
            st = await self._call(functools.partial(_commit_write, pending, self._fsync), shown, "write")
        except BaseException:
            await self._abort(pending, shown)
            raise
        return _file_stat(shown, st)

    async def make_dir(self, path: str) -> FileStat:
        parts = parse_path(path)
        return await self._run(lambda root: _make_dir(root, parts), _shown(parts), "create")

    async def remove(self, path: str) -> None:
        parts = _below_root(path)
        await self._run(lambda root: _remove(root, parts), _shown(parts), "remove")

    async def rename(self, src: str, dst: str) -> FileStat:
        src_parts, dst_parts = _below_root(src), _below_root(dst)
        shown = f"{_shown(src_parts)} -> {_shown(dst_parts)}"
        return await self._run(lambda root: _rename(root, src_parts, dst_parts), shown, "move")

    async def _abort(self, pending: _PendingWrite, shown: str) -> None:
        try:
            await self._call(functools.partial(_abort_write, pending), shown, "clean up after writing")
        except AgentcellError as err:  # the write's own error is the one worth raising
            log.warning("could not remove a partial write: %s", err.message)

    async def _run(
        self, job: Callable[[int], T], shown: str, action: str, undo: Callable[[T], object] | None = None
    ) -> T:
        """job(root fd) in a worker thread as the sandbox user; see `_submit`."""
        return await self._submit(functools.partial(self._rooted, job), shown, action, undo)

    async def _call(self, job: Callable[[], T], shown: str, action: str) -> T:
        """job() in a worker thread as the sandbox user; see `_submit`."""
        return await self._submit(functools.partial(self._as_user, job), shown, action)

    async def _submit(
        self, work: Callable[[], T], shown: str, action: str, undo: Callable[[T], object] | None = None
    ) -> T:
        """work() in a worker thread, OSErrors translated, once this sandbox has a pool slot free.
        If the caller is cancelled meanwhile, the work still finishes and `undo` releases what it
        returned."""
        async with self._pool_slots().semaphore:
            return await self._submit_now(work, shown, action, undo)

    def _pool_slots(self) -> _PoolSlots:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots.loop is not loop:
            self._slots = _slots_for(self._root_path, loop)
        return self._slots

    async def _submit_now(
        self, work: Callable[[], T], shown: str, action: str, undo: Callable[[T], object] | None
    ) -> T:
        loop = asyncio.get_running_loop()
        executor = self._executor or shared_executor()
        future = loop.run_in_executor(executor, work)
        if await _settle(future):
            if undo is not None and future.exception() is None:
                done = loop.run_in_executor(executor, self._as_user, functools.partial(undo, future.result()))
                await _settle(done)
                done.exception()  # retrieved: a failed undo must not be logged as unhandled
            raise asyncio.CancelledError
        try:
            return future.result()
        except OSError as err:
            raise translate_os_error(err, shown, action) from err

    def _as_user(self, job: Callable[[], T]) -> T:
        if self._ids is None:
            return job()
        with as_sandbox_user(*self._ids):
            return job()

    def _rooted(self, job: Callable[[int], T]) -> T:
        """Runs before `_as_user` switches: opening /proc/<pid>/root takes the server's rights."""
        root = self._open_root()
        try:
            return self._as_user(functools.partial(job, root))
        finally:
            os.close(root)

    def _open_root(self) -> int:
        try:
            root = os.open(self._root_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise NotRunning("the sandbox is not running: its root filesystem is gone") from err
        st = os.fstat(root)
        with self._identity_lock:
            self._root_identity = self._root_identity or (st.st_dev, st.st_ino)
            same = self._root_identity == (st.st_dev, st.st_ino)
        if not same:
            os.close(root)
            raise NotRunning("the sandbox is not running: its root filesystem was replaced")
        return root
