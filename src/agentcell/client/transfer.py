"""The local side of moving trees: reading local files without blocking the loop, planning and
encoding multipart uploads, and unpacking downloaded tar archives safely.

Safety of extraction: a member whose name is absolute or has a `..` component is refused
(UnsafeArchiveError) before anything is written; every other member goes through tarfile's
`data` filter, which also refuses writing through a symlink to outside the destination. Symlinks
themselves are kept as they are in the sandbox (like `tar` and `docker cp`), never followed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tarfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, cast

from agentcell.client.errors import ProtocolError, UnsafeArchiveError

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


def plan_upload(sources: Sequence[LocalPath]) -> UploadPlan:
    """Each file lands as `<remote dir>/<its name>`, each directory as `<remote dir>/<its name>/…`,
    like `cp -r a b dir/`. Symlinks to files are followed; symlinked directories are not entered."""
    plan = UploadPlan()
    for source in sources:
        path = Path(source)
        if path.is_dir():
            _plan_dir(path, PurePosixPath(path.resolve().name or "root"), plan)
        elif path.is_file():
            plan.files.append((path, path.name))
        else:
            raise FileNotFoundError(f"cannot upload {str(source)!r}: no such file or directory")
    return plan


def _plan_dir(root: Path, name: PurePosixPath, plan: UploadPlan) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        relative = name / PurePosixPath(*Path(dirpath).relative_to(root).parts)
        files = [f for f in sorted(filenames) if (Path(dirpath) / f).is_file()]
        plan.files.extend((Path(dirpath) / f, str(relative / f)) for f in files)
        if not files and not dirnames:
            plan.empty_dirs.append(str(relative))
        dirnames.sort()


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
    try:
        _extract_tree(archive, dest)
    except tarfile.FilterError as exc:
        raise UnsafeArchiveError(f"refusing archive member: {exc}") from None
    except tarfile.TarError as exc:
        raise ProtocolError(f"the archive could not be read: {exc}") from None


def _extract_tree(archive: IO[bytes], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=archive, mode="r:") as tar:
        members = tar.getmembers()
        for member in members:
            refuse_unsafe(member)
        if not members:
            raise ProtocolError("the archive is empty: expected at least the tree's root")
        root = members[0].name.rstrip("/")
        for member in members[1:]:
            if not member.name.startswith(root + "/"):
                raise ProtocolError(f"archive member {member.name!r} is outside its root {root!r}")
            member.name = member.name[len(root) + 1 :]
            tar.extract(member, dest, filter=_filter)


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
    if member.issym():
        # `tar` filter: keeps the link's target as it is, still refuses a name outside `dest`
        return tarfile.tar_filter(member, dest)
    return tarfile.data_filter(member, dest)
