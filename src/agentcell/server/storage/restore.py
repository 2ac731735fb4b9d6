"""Writing a validated manifest into a workspace directory, as root, without trusting the target.

The target is cleared first. Every entry is created relative to its parent's directory fd, opened
one component at a time with O_NOFOLLOW, with O_CREAT|O_EXCL|O_NOFOLLOW for files: nothing can be
redirected through a link, whatever the manifest or a process in the sandbox does. Each piece is
checked against its hash as it is written. Modes, owners and mtimes are set last (directories
deepest first, so writing children does not disturb them). On any failure the target is cleared
again: a session never sees half a workspace.

A file takes no more room than it did: hole pieces are skipped, blocks of BLOCK_BYTES that are
all zeros inside other pieces are not written, and each file is extended to its size at the end,
so holes stay holes (snapshots written before holes were recorded, with chunks of zeros, restore
sparse too); a hard link the manifest lists is linked to its first file again rather than written
as a copy. A restore's time follows the stored pieces, not the files' sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import defaultdict
from collections.abc import Iterator

from agentcell.errors import NotFound
from agentcell.server.storage.manifest import HOLE, INLINE, Entry, Manifest, Piece, SnapshotCorrupt
from agentcell.server.storage.objects import ObjectStore
from agentcell.server.storage.pieces import decode, is_zero_chunk
from agentcell.server.storage.threads import settled
from agentcell.server.storage.tree import DIR_FLAGS, DirCursor, open_root

CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
MODE_MASK = 0o1777  # setuid/setgid bits are never restored
MAX_CLEAR_DEPTH = 4096
WORKERS = max(1, min(4, os.cpu_count() or 1))
PARALLEL_MIN_BYTES = 1 << 20  # below this, one thread is faster than coordinating several
BLOCK_BYTES = 4096  # the unit of holes: a page of tmpfs, a block of the usual disk file systems
ZERO_BLOCK = bytes(BLOCK_BYTES)

Runs = list[tuple[int, int]]  # [start, stop) ranges of a piece's bytes that are not all zeros


class Restore:
    """Owns one restore of `manifest` into a directory; `run` leaves it complete or empty."""

    def __init__(
        self, store: ObjectStore, prefix: str, manifest: Manifest, owner: tuple[int, int] | None
    ) -> None:
        self._store, self._prefix, self._manifest, self._owner = store, prefix, manifest, owner

    async def run(self, dir_fd: int) -> None:
        root = open_root(dir_fd)  # one openat of a directory: not worth a thread
        cursor = DirCursor(root)
        try:
            await settled(clear_dir, root)
            await settled(self._make_tree, cursor)
            await self._write_files(cursor)
            await settled(self._link_files, cursor)
            await settled(self._finish_dirs, cursor)
        except BaseException:
            cursor.close()
            with contextlib.suppress(OSError):
                await settled(clear_dir, root)
            raise
        finally:
            cursor.close()
            os.close(root)

    # ---- structure --------------------------------------------------------------------------------

    def _make_tree(self, cursor: DirCursor) -> None:
        """(thread) Directories (private until finished) and symlinks, parents first."""
        for entry in self._manifest.entries:
            parent, _, name = entry.path.rpartition("/")
            if entry.kind == "d":
                os.mkdir(name, 0o700, dir_fd=cursor.at(parent))
            elif entry.kind == "l":
                fd = cursor.at(parent)
                os.symlink(entry.target, name, dir_fd=fd)
                if self._owner is not None:
                    os.chown(name, *self._owner, dir_fd=fd, follow_symlinks=False)
                ns = (entry.mtime_ns, entry.mtime_ns)
                os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)

    def _link_files(self, cursor: DirCursor) -> None:
        """(thread) Each hard link, to its first file (written and finished by now). The link is
        made in a directory that is still private; linkat never follows a symlink at the source."""
        if not self._manifest.links:
            return
        sources = DirCursor(cursor.root)
        try:
            for path, first in sorted(self._manifest.links.items()):
                source_dir, _, source = first.rpartition("/")
                parent, _, name = path.rpartition("/")
                os.link(
                    source,
                    name,
                    src_dir_fd=sources.at(source_dir),
                    dst_dir_fd=cursor.at(parent),
                    follow_symlinks=False,
                )
        finally:
            sources.close()

    def _finish_dirs(self, cursor: DirCursor) -> None:
        """(thread) Owner, mode and mtime of every directory, deepest first."""
        for entry in reversed(self._manifest.entries):
            if entry.kind != "d":
                continue
            parent, _, name = entry.path.rpartition("/")
            fd = os.open(name, DIR_FLAGS, dir_fd=cursor.at(parent))
            try:
                self._finish(fd, entry)
            finally:
                os.close(fd)

    def _finish(self, fd: int, entry: Entry) -> None:
        if self._owner is not None:
            os.fchown(fd, *self._owner)
        os.fchmod(fd, entry.mode & MODE_MASK)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    # ---- file contents ----------------------------------------------------------------------------

    async def _write_files(self, cursor: DirCursor) -> None:
        """Packed small files one pack at a time (one get each); other files piece by piece."""
        by_pack, others = await settled(self._files_by_pack)
        packs = sorted(by_pack)
        fetch = asyncio.ensure_future(self._get(packs[0])) if packs else None
        try:
            for index, obj in enumerate(packs):
                assert fetch is not None
                data = await fetch
                fetch = asyncio.ensure_future(self._get(packs[index + 1])) if index + 1 < len(packs) else None
                await self._write_pack(cursor, by_pack[obj], data)
        finally:
            if fetch is not None:
                fetch.cancel()
                with contextlib.suppress(BaseException):
                    await fetch
        for entry in others:
            await self._write_pieces(cursor, entry)

    def _files_by_pack(self) -> tuple[dict[str, list[Entry]], list[Entry]]:
        """(thread: a million entries take a while) The files to write that live in a pack, by
        pack; the others."""
        by_pack: dict[str, list[Entry]] = defaultdict(list)
        others: list[Entry] = []
        for entry in self._manifest.entries:
            if entry.kind != "f" or entry.path in self._manifest.links:
                continue
            if len(entry.pieces) == 1 and _is_packed(entry.pieces[0].obj):
                by_pack[entry.pieces[0].obj].append(entry)
            else:
                others.append(entry)
        return by_pack, others

    async def _write_pack(self, cursor: DirCursor, entries: list[Entry], data: bytes) -> None:
        """Files of one pack, in WORKERS threads (zlib and sha256 release the GIL), each with
        its own directory cursor."""
        shares = _split_by_size(entries, WORKERS)
        if len(shares) == 1:
            await settled(self._write_packed, cursor, entries, data)
            return
        cursors = [DirCursor(cursor.root) for _ in shares]
        try:
            jobs = [
                settled(self._write_packed, c, share, data) for c, share in zip(cursors, shares, strict=True)
            ]
            outcomes = await asyncio.gather(*jobs, return_exceptions=True)  # all threads done
        finally:
            for extra in cursors:
                extra.close()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    def _write_packed(self, cursor: DirCursor, entries: list[Entry], data: bytes) -> None:
        """(thread) Write files whose single piece lives in the pack `data`."""
        view = memoryview(data)
        for entry in entries:
            piece = entry.pieces[0]
            raw, runs = _verified(piece, view[piece.offset : piece.offset + piece.stored])
            fd = self._create(cursor, entry)
            try:
                end = _write_runs(fd, raw, runs, 0)
                self._finish_file(fd, entry, end)
            finally:
                os.close(fd)

    async def _write_pieces(self, cursor: DirCursor, entry: Entry) -> None:
        """A file piece by piece; a hole is skipped, a repeated piece (the zero chunks of a sparse
        file in older snapshots) is fetched and checked once, and one that is all zeros costs
        nothing more."""
        fd = await settled(self._create, cursor, entry)
        try:
            offset = end = 0
            last: Piece | None = None
            raw: bytes = b""  # of `last`
            runs: Runs = []
            for piece in entry.pieces:
                if piece.obj == HOLE:
                    offset += piece.size
                    continue
                if piece != last:
                    data = memoryview(await self._get(piece.obj))
                    stored = data[piece.offset : piece.offset + piece.stored]
                    raw, runs = await settled(_verified, piece, stored)
                    last = piece
                if runs:
                    end = await settled(_write_runs, fd, raw, runs, offset)
                offset += piece.size
            await settled(self._finish_file, fd, entry, end)
        finally:
            os.close(fd)

    def _finish_file(self, fd: int, entry: Entry, end: int) -> None:
        """(thread) Extend the file over its trailing hole, then owner, mode and mtime."""
        if end < entry.size:
            os.ftruncate(fd, entry.size)
        self._finish(fd, entry)

    def _create(self, cursor: DirCursor, entry: Entry) -> int:
        parent, _, name = entry.path.rpartition("/")
        return os.open(name, CREATE_FLAGS, 0o600, dir_fd=cursor.at(parent))

    async def _get(self, obj: str) -> bytes:
        if obj == INLINE:
            return self._manifest.inline
        key = f"{self._prefix}/{obj}"
        try:
            return await self._store.get(key)
        except NotFound as exc:
            raise SnapshotCorrupt(f"snapshot object {key!r} is missing") from exc


def needed_bytes(manifest: Manifest) -> int:
    """About how many bytes of file data a restore of `manifest` writes: hard links, holes and
    chunks of zeros count nothing; zero blocks inside other pieces count."""
    return sum(
        piece.size
        for entry in manifest.entries
        if entry.kind == "f" and entry.path not in manifest.links
        for piece in entry.pieces
        if piece.obj != HOLE and not is_zero_chunk(piece)
    )


def _is_packed(obj: str) -> bool:
    """Objects holding many small files, fetched whole once: packs and the manifest's inline area."""
    return obj == INLINE or obj.startswith("packs/")


def _split_by_size(entries: list[Entry], parts: int) -> list[list[Entry]]:
    """Consecutive runs of `entries` of about equal bytes (neighbours share parent dirs)."""
    total = sum(entry.size for entry in entries)
    if total < PARALLEL_MIN_BYTES or len(entries) < 2:
        return [entries]
    shares: list[list[Entry]] = [[]]
    filled = 0
    for entry in entries:
        if filled >= total * len(shares) / parts and len(shares) < parts:
            shares.append([])
        shares[-1].append(entry)
        filled += entry.size
    return [share for share in shares if share]


def _verified(piece: Piece, stored: memoryview) -> tuple[bytes, Runs]:
    """(thread) The raw bytes of a piece, checked against its hash, and where its data is."""
    raw = bytes(decode(piece, stored))
    return raw, list(_data_runs(raw))


def _data_runs(raw: bytes) -> Iterator[tuple[int, int]]:
    """The ranges of `raw` made of BLOCK_BYTES blocks that are not all zeros, in order."""
    start = -1
    for pos in range(0, len(raw), BLOCK_BYTES):
        block = raw[pos : pos + BLOCK_BYTES]
        zero = block == ZERO_BLOCK if len(block) == BLOCK_BYTES else block.count(0) == len(block)
        if zero and start >= 0:
            yield start, pos
            start = -1
        elif not zero and start < 0:
            start = pos
    if start >= 0:
        yield start, len(raw)


def _write_runs(fd: int, raw: bytes, runs: Runs, offset: int) -> int:
    """(thread) Write the `runs` of `raw` at `offset` in the file (the rest stays a hole); returns
    where the last one ends in the file."""
    view = memoryview(raw)
    end = offset
    for start, stop in runs:
        chunk, at = view[start:stop], offset + start
        while chunk:
            written = os.pwrite(fd, chunk, at)
            chunk, at = chunk[written:], at + written
        end = at
    return end


def clear_dir(root: int) -> None:
    """(thread) Remove everything inside the directory `root`, never following a link.

    Depth-first with one open fd per level; `root` itself stays (and stays open).
    """
    stack: list[tuple[int, str, list[os.DirEntry[str]]]] = [(root, "", _entries(root))]
    try:
        while stack:
            fd, name, items = stack[-1]
            if not items:
                stack.pop()
                if stack:
                    os.close(fd)
                    os.rmdir(name, dir_fd=stack[-1][0])
                continue
            item = items.pop()
            if not item.is_dir(follow_symlinks=False):
                os.unlink(item.name, dir_fd=fd)
                continue
            if len(stack) >= MAX_CLEAR_DEPTH:
                raise OSError(f"workspace deeper than {MAX_CLEAR_DEPTH} levels")
            child = os.open(item.name, DIR_FLAGS, dir_fd=fd)
            stack.append((child, item.name, _entries(child)))
    finally:
        for fd, _, _ in stack[1:]:
            os.close(fd)


def _entries(fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(fd) as listing:
        return list(listing)
