"""The local side of moving trees: reading local files without blocking the loop, planning and
encoding multipart uploads, and unpacking downloaded tar archives safely.

Safety of extraction: a member whose name is absolute or has a `..` component is refused
(UnsafeArchiveError) before anything is written; every other member goes through tarfile's
`data` filter, which also refuses writing through a symlink to outside the destination. Symlinks
themselves are kept as they are in the sandbox (like `tar` and `docker cp`), never followed: they
are made after everything else, and a member named twice or below a symlink is refused (a tree's
archive has neither), so no member is written through a link whatever tarfile's version.
Names come as the sandbox's exact bytes, so a name that is not UTF-8 keeps its bytes here too.

Safety of uploads: inside a directory being copied, a symlink is followed only when its target
resolves inside that directory (see `plan_upload`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, cast

from agentcell.client.errors import InvalidArgumentError, ProtocolError, UnsafeArchiveError

if TYPE_CHECKING:
    import tarfile

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
LocalPath = str | os.PathLike[str]
ProgressCallback = Callable[[int], object]
"""Called with the number of bytes just moved (an increment, not a running total)."""

WriteData = (
    bytes | bytearray | memoryview | str | IO[bytes] | IO[str] | AsyncIterable[bytes] | Iterable[bytes]
)
"""What `files.write` streams: bytes, text (UTF-8), a file object opened for reading, or an
(async) iterable of byte chunks."""


async def iter_file_object(file: IO[Any], progress: ProgressCallback | None = None) -> AsyncIterator[bytes]:
    """Chunks of an open file, read in a worker thread so that a slow disk never blocks the loop."""
    while chunk := await asyncio.to_thread(file.read, CHUNK_BYTES):
        data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        if progress:
            progress(len(data))
        yield data


async def iter_local_file(path: Path, progress: ProgressCallback | None = None) -> AsyncIterator[bytes]:
    file = await asyncio.to_thread(path.open, "rb")
    try:
        async for chunk in iter_file_object(file, progress):
            yield chunk
    finally:
        await asyncio.to_thread(file.close)


async def iter_write_data(data: WriteData) -> AsyncIterator[bytes]:
    """Any WriteData as async byte chunks."""
    if isinstance(data, bytes | bytearray | memoryview):
        yield bytes(data)
    elif isinstance(data, str):
        yield data.encode()
    elif isinstance(data, AsyncIterable):
        async for chunk in data:
            yield bytes(chunk)
    elif hasattr(data, "read"):
        async for chunk in iter_file_object(cast(IO[Any], data)):
            yield chunk
    else:
        chunks = iter(data)
        while (piece := await asyncio.to_thread(_next_chunk, chunks)) is not None:
            yield bytes(piece)


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


@dataclass(slots=True)
class UploadPlan:
    """Local files with their destination names (POSIX, relative to the remote directory), and the
    directories that hold no file (multipart cannot carry them; they are made one by one)."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    empty_dirs: list[str] = field(default_factory=list)


def plan_upload(sources: Sequence[LocalPath], contents: bool = False) -> UploadPlan:
    """Each file lands as `<remote dir>/<its name>`, each directory as `<remote dir>/<its name>/…`,
    like `cp -r a b dir/` (with `contents`, a directory's contents land in `<remote dir>` itself,
    like `cp -r a/. dir/`). A source that is a symlink is followed. Inside a directory, a symlink to
    a file is followed only when its target resolves inside that directory; one that leads out of
    it is skipped with a warning (like rsync's --safe-links), so that a hostile link in, say, a
    cloned repository cannot carry a host file such as ~/.ssh/id_ed25519 into the sandbox.
    Symlinked directories are not entered. Sandbox paths are text: an entry whose name is not
    UTF-8 is skipped with a warning, and a source named so is refused (InvalidArgumentError)."""
    plan = UploadPlan()
    for source in sources:
        path = Path(source)
        if path.is_dir():
            name = "." if contents else require_utf8(path.resolve().name or "root")
            _plan_dir(path, PurePosixPath(name), plan)
        elif path.is_file():
            plan.files.append((path, require_utf8(path.name)))
        else:
            raise FileNotFoundError(f"cannot upload {str(source)!r}: no such file or directory")
    return plan


def _plan_dir(root: Path, name: PurePosixPath, plan: UploadPlan) -> None:
    inside = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        relative = name / PurePosixPath(*here.relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if _is_text_name(here / d))
        files = [(f, real) for f in sorted(filenames) if (real := _uploadable(here / f, inside))]
        plan.files.extend((real, str(relative / f)) for f, real in files)
        if not files and not dirnames:
            plan.empty_dirs.append(str(relative))


def _uploadable(path: Path, inside: Path) -> Path | None:
    """The file to read for `path` (a symlink's target, resolved), or None to leave it out."""
    if not _is_text_name(path):
        return None
    if not path.is_symlink():
        return path if path.is_file() else None
    target = Path(os.path.realpath(path))  # unlike Path.resolve, never raises on a loop
    if not target.is_relative_to(inside):
        log.warning("skipping %s: a symlink to %s, outside the directory being copied", path, target)
        return None
    return target if target.is_file() else None


def _is_text_name(path: Path) -> bool:
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        log.warning("skipping %s: its name is not UTF-8, which a sandbox path must be", path)
        return False
    return True


def require_utf8(path: str) -> str:
    """`path` if it can be a sandbox path (text); else InvalidArgumentError, before sending."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise InvalidArgumentError(
            f"'{shown}' is not valid UTF-8, which a sandbox path must be: rename it first"
        ) from None
    return path


def is_multipart_safe(name: str) -> bool:
    """Whether a name can sit in a Content-Disposition filename without escaping rules the
    server might read differently; other files go up by a plain PUT instead."""
    return not any(c in name for c in '"\\\r\n\0')


def new_boundary() -> str:
    return "agentcell-" + secrets.token_hex(16)


async def multipart_body(
    boundary: str, files: Sequence[tuple[Path, str]], progress: ProgressCallback | None
) -> AsyncIterator[bytes]:
    """A multipart/form-data body with one part per file, files read one at a time as sent."""
    for path, name in files:
        yield (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        async for chunk in iter_local_file(path, progress):
            yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def extract_tree(archive: IO[bytes], dest: Path) -> None:
    """Unpack a tar whose first member is the tree's root (as the archive endpoint sends it) into
    `dest`: the root's contents land directly in `dest`, which is made if missing."""
    import tarfile  # here, not at the top: every SDK script imports this module, few download trees

    try:
        _extract_tree(archive, dest)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"refusing archive member: {exc}") from None
    except tarfile.TarError as exc:
        raise ProtocolError(f"the archive could not be read: {exc}") from None


def _extract_tree(archive: IO[bytes], dest: Path) -> None:
    import tarfile

    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=archive, mode="r:") as tar:
        members = tar.getmembers()
        for member in members:
            refuse_unsafe(member)
        if not members:
            raise ProtocolError("the archive is empty: expected at least the tree's root")
        root = members[0].name.rstrip("/")
        links: list[tarfile.TarInfo] = []
        seen: set[str] = set()
        for member in members[1:]:
            if not member.name.startswith(root + "/"):
                raise ProtocolError(f"archive member {member.name!r} is outside its root {root!r}")
            member.name = member.name[len(root) + 1 :]
            _refuse_repeat_or_below_link(member, seen, {link.name for link in links})
            if member.issym():
                links.append(member)  # made last: nothing of the archive is written through one
                continue
            tar.extract(member, dest, filter=_filter)
        for link in links:
            tar.extract(link, dest, filter=_filter)


def _refuse_repeat_or_below_link(member: tarfile.TarInfo, seen: set[str], links: set[str]) -> None:
    """A tree's archive names each path once and never one below a symlink (tar does not follow
    them): either would be a way to write outside `dest` that tarfile's own filter misses on some
    Python versions (a chain of links longer than PATH_MAX, CVE-2025-4517)."""
    name = member.name.rstrip("/")
    if name in seen:
        raise UnsafeArchiveError(f"refusing archive member named twice: {name!r}")
    seen.add(name)
    parents = PurePosixPath(name).parents
    if any(str(parent) in links for parent in parents):
        raise UnsafeArchiveError(f"refusing archive member below a symlink: {name!r}")


def refuse_unsafe(member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        raise UnsafeArchiveError(f"refusing archive member with an absolute path: {name!r}")
    if ".." in PurePosixPath(name).parts:
        raise UnsafeArchiveError(f"refusing archive member with a '..' component: {name!r}")
    if member.islnk():
        raise UnsafeArchiveError(f"refusing hard link in archive: {name!r}")
    if not (member.isfile() or member.isdir() or member.issym()):
        raise UnsafeArchiveError(f"refusing special file in archive: {name!r}")


def _filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
    import tarfile

    if member.issym():
        # `tar` filter: keeps the link's target as it is, still refuses a name outside `dest`
        return tarfile.tar_filter(member, dest)
    return tarfile.data_filter(member, dest)
