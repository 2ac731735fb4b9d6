"""A streamed tar archive of a tree inside a sandbox, built entry by entry (never whole in memory)."""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import AsyncIterator

from agentcell.server.sandbox.driver import FileStat, SandboxFiles

BLOCK = 512


def _header(entry: FileStat, arcname: str) -> bytes:
    info = tarfile.TarInfo(arcname)
    info.mode = entry.mode & 0o7777
    info.mtime = int(entry.mtime.timestamp())
    info.uname = info.gname = "user"
    info.uid = info.gid = 1000
    if entry.type == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.type == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, entry.symlink_target or ""
    else:
        info.size = entry.size
    return info.tobuf(format=tarfile.PAX_FORMAT)


async def _file_blocks(files: SandboxFiles, entry: FileStat) -> AsyncIterator[bytes]:
    sent = 0
    async for chunk in files.read(entry.path):
        chunk = chunk[: max(0, entry.size - sent)]  # the header promised entry.size bytes
        sent += len(chunk)
        yield chunk
    if sent < entry.size:
        yield bytes(entry.size - sent)
    if entry.size % BLOCK:
        yield bytes(BLOCK - entry.size % BLOCK)


async def archive_entries(files: SandboxFiles, root: FileStat, max_depth: int = 16) -> list[FileStat]:
    """What an archive of `root` holds, listed before the answer starts (so a tree too large to
    list is a clean error rather than a broken stream)."""
    return [root] + (await files.list(root.path, max_depth) if root.type == "dir" else [])


async def tar_stream(files: SandboxFiles, root: FileStat, entries: list[FileStat]) -> AsyncIterator[bytes]:
    base = posixpath.dirname(root.path.rstrip("/")) or "/"
    for entry in entries:
        if entry.type == "other":
            continue
        yield _header(entry, posixpath.relpath(entry.path, base))
        if entry.type == "file":
            async for block in _file_blocks(files, entry):
                yield block
    yield bytes(2 * BLOCK)
