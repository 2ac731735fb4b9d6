"""A function's code on its way up: a directory packed into a gzipped tar (streamed into a temporary
file, never held in memory), or a tar the caller already has, sent as it is; and the multipart
body of a deploy, streamed from that file.

What a directory's archive holds: every file, directory and symlink under it (symlinks kept as
links, never followed), named relative to it, minus anything named in SKIPPED_NAMES at any depth
and minus special files (sockets, fifos, devices), which no instance could use. Hard links become
plain copies and owners become root, so the archive says nothing about the packing machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tarfile
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from agentcell.client.errors import InvalidArgumentError
from agentcell.client.transfer import LocalPath, ProgressCallback, iter_file_object

SKIPPED_NAMES = frozenset({".git", "__pycache__", "node_modules", ".venv"})
"""Directory entries never packed, at any depth: history, caches and installed dependencies."""


class PackingCancelled(Exception):
    """The caller stopped waiting; the worker thread stops packing at its next read."""


@dataclass(slots=True)
class CodeArchive:
    """An open tar (or tar.gz) of a function's code and its size in bytes."""

    file: IO[bytes]
    size: int


@contextlib.asynccontextmanager
async def opened_archive(
    code: LocalPath, on_pack_progress: ProgressCallback | None = None
) -> AsyncIterator[CodeArchive]:
    """`code` as a tar ready to send: a directory is packed into a temporary file (deleted on exit),
    a tar file is opened as it is. Anything else is an InvalidArgumentError; a missing path,
    FileNotFoundError. `on_pack_progress` gets the bytes of each file read while packing (from a
    worker thread)."""
    path = Path(code)
    if await asyncio.to_thread(path.is_dir):
        with await asyncio.to_thread(tempfile.TemporaryFile) as spool:
            await _pack_in_thread(path, spool, on_pack_progress)
            yield CodeArchive(spool, await asyncio.to_thread(spool.tell))
            return
    await asyncio.to_thread(_require_tar, path)
    with await asyncio.to_thread(path.open, "rb") as file:
        yield CodeArchive(file, (await asyncio.to_thread(os.fstat, file.fileno())).st_size)


def _require_tar(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if not (path.is_file() and tarfile.is_tarfile(path)):
        raise InvalidArgumentError(
            f"code must be a directory or a .tar / .tar.gz archive of one; {str(path)!r} is neither"
        )


async def _pack_in_thread(root: Path, out: IO[bytes], progress: ProgressCallback | None) -> None:
    stop = threading.Event()
    try:
        await asyncio.to_thread(pack_directory, root, out, progress, stop)
    except BaseException:
        stop.set()  # a cancelled wait leaves the thread running: make it stop at its next read
        raise


def pack_directory(
    root: Path, out: IO[bytes], progress: ProgressCallback | None = None, stop: threading.Event | None = None
) -> None:
    """Write a gzipped tar of `root`'s contents to `out` (see the module docstring for what goes in)."""
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as tar:
        for path, name in walk_code(root):
            info = tar.gettarinfo(str(path), arcname=name)
            if info is None or not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
                continue  # a socket or fifo: gettarinfo gives None for sockets
            _anonymise(info, path)
            if info.isfile():
                with path.open("rb") as file:
                    tar.addfile(info, _CountingReader(file, progress, stop))
            else:
                tar.addfile(info)


def walk_code(root: Path) -> Iterable[tuple[Path, str]]:
    """Every entry under `root` (sorted, parents first) with its POSIX name relative to `root`,
    skipping SKIPPED_NAMES; symlinked directories are listed, not entered."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_NAMES)
        base = Path(dirpath)
        relative = base.relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        for entry in sorted([*dirnames, *(f for f in filenames if f not in SKIPPED_NAMES)]):
            yield base / entry, prefix + entry


def _anonymise(info: tarfile.TarInfo, path: Path) -> None:
    if info.islnk():  # a second name of a file already packed: the server takes no hard links
        info.type, info.linkname, info.size = tarfile.REGTYPE, "", path.stat().st_size
    info.uid = info.gid = 0
    info.uname = info.gname = ""


class _CountingReader:
    """A file read by tarfile, reporting each chunk and checking for cancellation between them."""

    def __init__(
        self, file: IO[bytes], progress: ProgressCallback | None, stop: threading.Event | None
    ) -> None:
        self._file = file
        self._progress = progress
        self._stop = stop

    def read(self, size: int = -1) -> bytes:
        if self._stop is not None and self._stop.is_set():
            raise PackingCancelled("packing was cancelled")
        chunk = self._file.read(size)
        if self._progress is not None and chunk:
            self._progress(len(chunk))
        return chunk


@dataclass(frozen=True, slots=True)
class DeployBody:
    """A streamed multipart/form-data deploy: the `config` JSON field, then the `code` file."""

    content_type: str
    content_length: int
    chunks: AsyncIterator[bytes]


def deploy_body(
    boundary: str, config_json: bytes, archive: CodeArchive, progress: ProgressCallback | None
) -> DeployBody:
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="config"\r\n'
        "Content-Type: application/json\r\n\r\n"
    ).encode() + config_json
    head += (
        f"\r\n--{boundary}\r\n"
        'Content-Disposition: form-data; name="code"; filename="code.tar"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return DeployBody(
        content_type=f"multipart/form-data; boundary={boundary}",
        content_length=len(head) + archive.size + len(tail),
        chunks=_body_chunks(head, archive.file, tail, progress),
    )


async def _body_chunks(
    head: bytes, file: IO[bytes], tail: bytes, progress: ProgressCallback | None
) -> AsyncIterator[bytes]:
    await asyncio.to_thread(file.seek, 0)
    yield head
    async for chunk in iter_file_object(file, progress):
        yield chunk
    yield tail
