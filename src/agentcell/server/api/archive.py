"""A streamed tar archive of a tree inside a sandbox, built entry by entry (never whole in memory).

An archive is complete or refused. `tar` warns about each file it cannot read and exits non-zero
at the end, but an HTTP answer cannot change its status once it has started; so before the first
byte every file and directory in the tree is opened once as the sandbox user, and one the user
may not read refuses the whole archive (403, naming it). Entries that vanish meanwhile are left
out, as `tar` leaves out files removed before it reads them. Names are the exact bytes of the
sandbox's names (PAX headers), including names that are not UTF-8.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import tarfile
from collections.abc import AsyncIterator, Sequence
from pathlib import PurePosixPath

from agentcell.errors import InvalidArgument, NotFound, PayloadTooLarge, PermissionDenied
from agentcell.protocol.files import wire_text
from agentcell.server.sandbox.driver import FileStat, SandboxFiles

BLOCK = 512
PROBES_AT_ONCE = 4


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
    """What an archive of `root` holds, listed and checked readable before the answer starts (so a
    tree too large to list, or holding a file the user may not read, is a clean error rather than
    a broken stream)."""
    entries = [root] + (await _tree(files, root, max_depth) if root.type == "dir" else [])
    await _check_depth(files, root, entries, max_depth)
    kept: list[FileStat] = []
    for start in range(0, len(entries), PROBES_AT_ONCE):
        batch = entries[start : start + PROBES_AT_ONCE]
        found = await asyncio.gather(*(_is_there(files, entry) for entry in batch), return_exceptions=True)
        for outcome in found:
            if isinstance(outcome, BaseException):
                raise outcome
        kept += [entry for entry, there in zip(batch, found, strict=True) if there]
    if not kept or kept[0] is not root:
        raise NotFound(f"no such file or directory: {wire_text(root.path)}")
    return kept


async def _tree(files: SandboxFiles, root: FileStat, max_depth: int) -> list[FileStat]:
    try:
        return await files.list(root.path, max_depth)
    except PayloadTooLarge:  # its advice is a listing's ("list less deep")
        raise PayloadTooLarge(
            f"{wire_text(root.path)} holds more entries than one archive may (the listing limit); "
            "download its subdirectories one by one, or pack it inside the sandbox (a command: "
            "tar czf /tmp/out.tgz DIR) and download that file"
        ) from None


async def _check_depth(files: SandboxFiles, root: FileStat, entries: list[FileStat], max_depth: int) -> None:
    """The listing stops `max_depth` levels down: a directory there that holds anything would be
    archived empty, so the archive is refused instead."""
    base = len(PurePosixPath(root.path).parts)
    deepest = [e for e in entries if e.type == "dir" and len(PurePosixPath(e.path).parts) - base == max_depth]
    for entry in deepest:
        if await files.list(entry.path, 1):
            raise InvalidArgument(
                f"{wire_text(entry.path)} is {max_depth} levels below {wire_text(root.path)} and "
                "holds more: archive a deeper directory on its own, or pack it inside the "
                "sandbox (tar czf /tmp/out.tgz DIR)"
            )


async def _is_there(files: SandboxFiles, entry: FileStat) -> bool:
    """Open `entry` as the sandbox user: False if it is gone, PermissionDenied if unreadable."""
    try:
        if entry.type == "file":
            async with contextlib.aclosing(files.read(entry.path, 1)) as chunks:
                await anext(chunks, b"")
        elif entry.type == "dir":
            os.close(await files.open_dir(entry.path))
    except NotFound:
        return False
    except PermissionDenied as err:
        raise PermissionDenied(
            f"{err.message}, so the archive would be incomplete: change its permissions in the"
            " sandbox, or archive a path without it"
        ) from err
    return True


def tar_stream(files: SandboxFiles, root: FileStat, entries: list[FileStat]) -> AsyncIterator[bytes]:
    """The archive of `root`, its names starting with the root's own name."""
    return tar_of(files, [(posixpath.dirname(root.path.rstrip("/")) or "/", entries)])


async def tar_of(files: SandboxFiles, trees: Sequence[tuple[str, list[FileStat]]]) -> AsyncIterator[bytes]:
    """One archive of several listed trees, each entry named relative to its tree's base."""
    for base, entries in trees:
        for entry in entries:
            if entry.type == "other":
                continue
            yield _header(entry, posixpath.relpath(entry.path, base))
            if entry.type == "file":
                async for block in _file_blocks(files, entry):
                    yield block
    yield bytes(2 * BLOCK)
