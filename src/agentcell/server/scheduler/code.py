"""Function code on the node: a tar archive unpacked safely into an immutable, read-only directory.

The archive comes from a tenant and is unpacked by root, so tarfile's own extraction (whose
filters trust os.path.realpath, which stops resolving once a chain of symlinks outgrows PATH_MAX:
CVE-2025-4517) is not used. Entries are checked as they stream by (count, size, names, each path
given once, never below a file or a symlink), written through directory fds opened with
O_NOFOLLOW one component at a time, and symlinks are made last: nothing is ever written through a
link. Symlinks are kept as links; they resolve inside the instance, where /code is read-only.

What the code costs the node's disk is counted as it is written (`code_bytes` counts stored code
the same way): each entry at least ENTRY_BYTES, a file its size rounded up to it. A deploy stops
when its tenant's code quota (a CodeBudget) or the node's free-space floor (`room_bytes`) would be
passed, and what it unpacked is removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

from agentcell.errors import InvalidArgument, PayloadTooLarge, QuotaExceeded, Unavailable
from agentcell.server.templates.layers import remove_tree

log = logging.getLogger(__name__)

MAX_CODE_BYTES = 1 << 30
MAX_CODE_FILES = 100_000
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4089
"""so that /code/<path> fits in PATH_MAX inside the instance"""
MAX_CODE_DEPTH = 256
"""directory levels below /code (node_modules tops out near 30): the read-only pass and removal
walk one Python frame per level, and a tree deeper than the interpreter's recursion limit (a
1500-level path fits in MAX_PATH_BYTES) could be neither sealed nor removed"""
ENTRY_BYTES = 4096
"""what an entry costs the node's disk at least: an inode, a block for most file systems"""
FLOOR_FRACTION = 0.05
FLOOR_MAX_BYTES = 1 << 30
"""Code is not written once the file system holding it would have less than the smaller of 5 % of
its size and 1 GiB free (`room_bytes`). Whatever tenants' quotas say, the node's own writes must
go on: the metadata database (SQLite fails a commit on a full disk), logs, uploads in flight,
templates and snapshots share the disk. 5 % keeps a small disk usable; on a large one 1 GiB is
headroom enough for those writes, where 5 % would hold back many deploys' worth of space."""
CHUNK_BYTES = 1 << 20
STAGING_PREFIX = ".staging-"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CORRUPT = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)
"""what a truncated or damaged tar, gzip, bzip2 or xz stream raises while it is read"""

Kind = Literal["file", "directory", "symlink"]


def entry_bytes(size: int) -> int:
    """What an entry of `size` bytes costs the disk: whole blocks, at least one."""
    return max(ENTRY_BYTES, -(-size // ENTRY_BYTES) * ENTRY_BYTES)


def room_bytes(path: Path, statvfs: Callable[[Path], os.statvfs_result] = os.statvfs) -> int:
    """Bytes that may still be written to `path`'s file system before its free space falls below
    the node's floor (FLOOR_FRACTION of it, at most FLOOR_MAX_BYTES); negative: below already.
    Counts only what unprivileged users may use (root's reserve is extra headroom)."""
    stats = statvfs(path)
    floor = min(int(stats.f_blocks * stats.f_frsize * FLOOR_FRACTION), FLOOR_MAX_BYTES)
    return stats.f_bavail * stats.f_frsize - floor


def short_of_disk() -> Unavailable:
    return Unavailable(
        "the node is short of disk: this code would leave it less free space than it keeps in "
        f"reserve ({FLOOR_FRACTION:.0%} of the disk, at most {FLOOR_MAX_BYTES >> 30} GiB); retry "
        "later, or ship less",
        retry_after_s=60,
    )


@dataclass(slots=True)
class CodeBudget:
    """What one deploy may write under its tenant's code quota: FunctionQuota.deploying gives it,
    Scheduler.deploy hands it to the unpacker, which charges each entry before writing it."""

    tenant: str
    quota_bytes: int
    stored_bytes: int
    """the tenant's code on disk before this deploy"""
    written_bytes: int = 0

    def charge(self, nbytes: int) -> None:
        self.written_bytes += nbytes
        if self.stored_bytes + self.written_bytes > self.quota_bytes:
            raise self.exceeded()

    def exceeded(self) -> QuotaExceeded:
        stored_mib = self.stored_bytes / (1 << 20)
        return QuotaExceeded(
            f"tenant {self.tenant}'s function code would pass its quota of {self.quota_bytes >> 20} "
            f"MiB on disk (max_code_mb; {stored_mib:.1f} MiB stored already, each version counted "
            "until no instance runs it); delete functions it no longer needs, ship less code "
            "(install dependencies at start-up, or build a template), or raise the quota"
        )


def unpack_staged(archive: Path, function_dir: Path, budget: CodeBudget | None = None) -> Path:
    """Unpack into a new staging directory inside `function_dir` (made if needed), to be moved
    into place by `install_code`, within `budget` (None: no code quota); on any failure nothing
    is left."""
    try:
        function_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=function_dir))
    except OSError as exc:
        raise _no_room(exc) from None
    unpack_code(archive, staging, budget)
    return staging


def unpack_code(
    archive: Path,
    target: Path,
    budget: CodeBudget | None = None,
    room: Callable[[Path], int] = room_bytes,
) -> int:
    """Unpack a tar (optionally gzip/bz2/xz) into `target`, an empty directory, charging `budget`
    and keeping `room(target)` above 0; returns the number of entries. On any failure `target`
    is removed."""
    try:
        with _opened(archive) as tar:
            count = _Unpacker(tar, target, budget, room).run()
        _make_read_only(target)
    except BaseException as exc:
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, OSError):
            raise _no_room(exc) from None
        raise
    return count


def install_code(staging: Path, code_dir: Path) -> None:
    """Move an unpacked version into place; what is there already is a crash's leftover (the
    caller holds the only right to this version number)."""
    if code_dir.exists():
        shutil.rmtree(code_dir)
    staging.rename(code_dir)


def remove_code(directories: Iterable[str | Path]) -> None:
    """Remove versions' code (no instance runs them) or a deploy's staging directory. Whatever
    the depth: code unpacked before MAX_CODE_DEPTH may be deeper than shutil.rmtree can recurse
    (its RecursionError at start-up stopped the server)."""
    for directory in directories:
        try:
            remove_tree(Path(directory))
        except OSError as exc:
            log.warning("could not remove code %s: %s", directory, exc)


def stale_code(code_root: Path, kept: Iterable[str]) -> list[Path]:
    """What a crash left under `code_root` (at start, before any deploy): directories of deleted
    functions, and in the others anything but the `kept` versions' code directories (older
    versions, deploys cut short). Matched on `<function>/<version>`, wherever the root now is."""
    if not code_root.is_dir():
        return []
    names = {(Path(d).parent.name, Path(d).name) for d in kept}
    functions = {function for function, _ in names}
    stale: list[Path] = []
    for function_dir in code_root.iterdir():
        if function_dir.name not in functions:
            stale.append(function_dir)
        else:
            stale.extend(p for p in function_dir.iterdir() if (function_dir.name, p.name) not in names)
    return stale


def code_bytes(directory: Path) -> int:
    """What stored code costs the disk, counted as the unpacker counts it (`entry_bytes` of each
    file's size, ENTRY_BYTES for each directory and symlink, the top one included)."""
    total = ENTRY_BYTES
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(directory):
        total += ENTRY_BYTES * len(dirnames)  # (symlinks to directories among them)
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(name, dir_fd=dirfd)
                total += entry_bytes(st.st_size) if stat.S_ISREG(st.st_mode) else ENTRY_BYTES
    return total


def _opened(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except CORRUPT:
        raise InvalidArgument(
            "code must be a tar archive (tar, tar.gz, tar.bz2 or tar.xz); this is none of them "
            "(a zip or an empty file?)"
        ) from None


def _corrupt(exc: BaseException) -> InvalidArgument:
    return InvalidArgument(f"code archive is truncated or corrupt ({exc}); upload it again in full")


class _Unpacker:
    """One pass over the archive's entries."""

    def __init__(
        self, tar: tarfile.TarFile, target: Path, budget: CodeBudget | None, room: Callable[[Path], int]
    ) -> None:
        self._tar = tar
        self._target = target
        self._budget = budget
        self._room = room
        self._room_left = 0
        """what may still be written before the floor, by the last reading of the disk"""
        self._kinds: dict[PurePosixPath, Kind] = {}
        self._links: list[tuple[PurePosixPath, str]] = []
        self._count = 0
        self._bytes = 0

    def run(self) -> int:
        self._charge(ENTRY_BYTES)  # the code directory itself
        for member in self._members():
            self._count += 1
            if self._count > MAX_CODE_FILES:
                raise PayloadTooLarge(
                    f"code archive has more than {MAX_CODE_FILES} entries; ship fewer files "
                    "(install dependencies at start-up, or build a template)"
                )
            path = _checked_path(member)
            if path is not None:
                self._place(member, path)
        for path, linkname in self._links:
            with _parent_fd(self._target, path) as parent:
                os.symlink(linkname, path.name, dir_fd=parent)
        return self._count

    def _members(self) -> Iterator[tarfile.TarInfo]:
        while True:
            try:
                member = self._tar.next()
            except CORRUPT as exc:
                raise _corrupt(exc) from None
            except OSError as exc:
                raise _read_error(exc) from None
            if member is None:
                return
            yield member

    def _place(self, member: tarfile.TarInfo, path: PurePosixPath) -> None:
        kind: Kind = "directory" if member.isdir() else "symlink" if member.issym() else "file"
        self._claim(path, kind)
        if kind == "directory":
            with _parent_fd(self._target, path) as parent, contextlib.suppress(FileExistsError):
                os.mkdir(path.name, 0o755, dir_fd=parent)
        elif kind == "symlink":
            if len(os.fsencode(member.linkname)) > MAX_PATH_BYTES:
                raise InvalidArgument(
                    f"code archive symlink {member.name!r}: its target is over {MAX_PATH_BYTES} bytes"
                )
            self._links.append((path, member.linkname))  # made last: nothing is written through one
        else:
            self._bytes += member.size
            if self._bytes > MAX_CODE_BYTES:
                raise PayloadTooLarge(f"code unpacks to more than {MAX_CODE_BYTES >> 20} MiB; ship less")
            # tarfile hands over exactly member.size bytes or raises: this is what gets written
            self._charge(entry_bytes(member.size))
            self._write(member, path)

    def _charge(self, nbytes: int) -> None:
        """Before an entry is made: it fits the tenant's quota and the node's free-space floor.
        The disk is read again only once the last reading's room is spent (not for each of up to
        100,000 entries): what others wrote meanwhile is seen then."""
        if self._budget is not None:
            self._budget.charge(nbytes)
        self._room_left -= nbytes
        if self._room_left < 0:
            self._room_left = self._room(self._target) - nbytes
            if self._room_left < 0:
                raise short_of_disk()

    def _claim(self, path: PurePosixPath, kind: Kind) -> None:
        """Each path once (a directory may repeat); every parent a directory, made as needed.
        Each new one is charged (a file when written, once its size is known)."""
        if len(path.parts) > MAX_CODE_DEPTH:
            raise InvalidArgument(
                f"code archive entry {str(path)[:64]!r}... is {len(path.parts)} levels deep; at most "
                f"{MAX_CODE_DEPTH} are allowed"
            )
        for parent in reversed(path.parents[:-1]):
            if parent not in self._kinds:
                self._charge(ENTRY_BYTES)
            seen = self._kinds.setdefault(parent, "directory")
            if seen == "symlink":
                raise InvalidArgument(
                    f"code archive entry {str(path)!r} is below {str(parent)!r}, a symlink: "
                    "entries may not go through symlinks"
                )
            if seen == "file":
                raise InvalidArgument(
                    f"code archive entry {str(path)!r} is below {str(parent)!r}, which is a file, "
                    "not a directory"
                )
        given = self._kinds.get(path)
        if given is not None and (given, kind) != ("directory", "directory"):
            raise InvalidArgument(
                f"code archive has {str(path)!r} twice (as a {given} and a {kind}); each path may appear once"
            )
        if given is None and kind != "file":
            self._charge(ENTRY_BYTES)
        self._kinds[path] = kind

    def _write(self, member: tarfile.TarInfo, path: PurePosixPath) -> None:
        mode = 0o555 if member.mode & 0o111 else 0o444
        source = self._tar.extractfile(member)
        assert source is not None  # a regular file always has data
        with _parent_fd(self._target, path) as parent:
            fd = os.open(path.name, FILE_FLAGS, mode, dir_fd=parent)
        with os.fdopen(fd, "wb") as out:
            _copy(source, out)
            with contextlib.suppress(OverflowError, ValueError, OSError):
                os.utime(out.fileno(), (member.mtime, member.mtime))


def _copy(source: IO[bytes], out: IO[bytes]) -> None:
    while True:
        try:
            chunk = source.read(CHUNK_BYTES)
        except CORRUPT as exc:
            raise _corrupt(exc) from None
        except OSError as exc:
            raise _read_error(exc) from None
        if not chunk:
            return
        out.write(chunk)


def _read_error(exc: OSError) -> Exception:
    """gzip and bz2 report damaged data as OSError without an errno (gzip.BadGzipFile)."""
    return _corrupt(exc) if exc.errno is None else exc


def _no_room(exc: OSError) -> Exception:
    """A full disk (or inode table) is the node's state, not a fault: 503 saying so."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Unavailable(
            "the node's disk has no room left for this code; retry later, or ship less", retry_after_s=60
        )
    return exc


def _checked_path(member: tarfile.TarInfo) -> PurePosixPath | None:
    """The entry's path relative to the code directory (None: the directory itself)."""
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise InvalidArgument(f"code archive entry {name!r} must be a relative path without '..'")
    if not (member.isfile() or member.isdir() or member.issym()):
        raise InvalidArgument(f"code archive entry {name!r}: only files, directories and symlinks")
    if not path.parts:
        if member.isdir():
            return None
        raise InvalidArgument(f"code archive entry {name!r} names the code directory itself")
    if any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in path.parts):
        raise InvalidArgument(f"code archive entry {name!r}: a name is over {MAX_NAME_BYTES} bytes")
    if len(os.fsencode(str(path))) > MAX_PATH_BYTES:
        raise InvalidArgument(f"code archive entry {name[:64]!r}...: the path is over {MAX_PATH_BYTES} bytes")
    return path


@contextlib.contextmanager
def _parent_fd(root: Path, path: PurePosixPath) -> Iterator[int]:
    """The directory that holds `path`, opened one component at a time without following links."""
    fd = os.open(root, DIR_FLAGS)
    try:
        for part in path.parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            child = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _make_read_only(root: Path) -> None:
    """Owned by root, readable (and where it was, executable) by everyone, writable by nobody."""
    for _dirpath, _dirnames, filenames, dirfd in os.fwalk(root):
        os.fchown(dirfd, 0, 0)
        os.fchmod(dirfd, 0o555)
        for name in filenames:
            if stat.S_ISLNK(os.lstat(name, dir_fd=dirfd).st_mode):
                continue
            os.chown(name, 0, 0, dir_fd=dirfd, follow_symlinks=False)
