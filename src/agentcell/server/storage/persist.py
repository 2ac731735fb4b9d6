"""One persist of one workspace: walk it, decide what changed, upload only that, build the manifest.

A file whose size, mtime, mode and inode change time equal its entry in the previous manifest is
reused without being read, unless its mtime was too close to the previous walk to be trusted (the
"racy clean" case: a write in the same timestamp tick would not have changed the mtime). The
change time is what a sandbox cannot put back (`cp -p`, `touch -r` restore an mtime); after a
restore, when every file has a new one, a file changed last by that restore counts as unchanged.
Content already stored (renamed files, identical files, unchanged chunks of a large file) is not
uploaded again. Packs that have become mostly dead are rewritten so stored bytes stay close to
live bytes. Files that share an inode are each stored as usual (their content is stored once) and
recorded as hard links of the first of them, so that a restore links them again instead of
writing copies.

A persist costs time in proportion to the data of a file, not its size: the holes of a sparse file
are found with SEEK_DATA and SEEK_HOLE and are neither read nor hashed (pieces.py: the chunked
hash), so a run of them is one hole piece whatever its length, and a piece of data ends where a
hole of MIN_HOLE_BYTES or more begins (a byte every 4 MiB is read as a block, not as 4 MiB).
Files are read up to the size they had when opened (a file growing as fast as it is read cannot
stall a persist), and a file larger than the manifest's MAX_FILE_BYTES (holes count: a restore
recreates the size) stops the persist before anything is uploaded, with an error naming it.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass, field, replace

from agentcell.errors import Conflict
from agentcell.server.storage.manifest import HOLE, INLINE, MAX_FILE_BYTES, Entry, Manifest, Piece
from agentcell.server.storage.objects import ObjectStore
from agentcell.server.storage.pieces import (
    CHUNK_BYTES,
    INLINE_BYTES,
    PACK_BYTES,
    SMALL_FILE_BYTES,
    Pack,
    blob_key,
    chunked_hash,
    digest,
    encode,
    hole,
    is_zero_chunk,
    pack_key,
)
from agentcell.server.storage.threads import settled
from agentcell.server.storage.tree import Excludes, Found, Reader, Scan, scan

RACY_NS = 1_000_000_000  # mtimes this close to the previous walk are re-hashed
HOLE_BLOCK_BYTES = 4096  # holes are found and stored in whole blocks of this size
MIN_HOLE_BYTES = 64 << 10  # a hole inside data smaller than this is read as zeros
SPARSE = 0.5  # rewrite a pack whose live bytes fall under half of it


@dataclass(slots=True)
class Totals:
    uploaded_bytes: int = 0
    hashed_files: int = 0
    objects: dict[str, int] = field(default_factory=dict)


class Persist:
    """Owns one persist; `run` returns the new manifest after every object it references is stored."""

    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        seq: int,
        previous: Manifest | None,
        *,
        compress: bool,
        small_file_bytes: int = SMALL_FILE_BYTES,
        restored_before: int = 0,
    ) -> None:
        """`restored_before`: files whose change time is below this (file-system ns) were last
        written by a restore of `previous` (their recorded change times are those of an earlier
        life); 0 when unknown."""
        self._store, self._prefix, self._seq = store, prefix, seq
        self._previous = previous
        self._restored_before = restored_before
        self._compress = compress
        self._small = small_file_bytes
        self._totals = Totals()
        self._by_hash: dict[str, Piece] = {}  # small-file content already stored → its piece
        self._known = dict(previous.objects) if previous else {}  # objects we may reference
        self._read_entries: dict[str, Entry] = {}
        self._inline = b""

    async def run(self, dir_fd: int, excludes: Excludes, created_at: float) -> Manifest:
        scan_ns = time.time_ns()  # file-system time, compared with file mtimes (not a deadline)
        # Every step over all of the workspace's entries runs in a thread (a million entries take
        # seconds of CPU), so that the event loop serves everyone else meanwhile.
        tree = await settled(scan, dir_fd, excludes)
        done, small, large = await settled(self._plan, tree)
        reader = await settled(Reader, dir_fd, tree.root_dev)
        try:
            large = sorted(large + await self._store_small(reader, small), key=lambda f: f.path)
            for found in large:
                entry = await self._store_large(reader, found)
                if entry is not None:
                    done[found.path] = entry
        finally:
            await settled(reader.close)
        return await settled(self._manifest, done, tree, created_at, scan_ns)

    # ---- planning ---------------------------------------------------------------------------------

    def _plan(self, tree: Scan) -> tuple[dict[str, Entry], list[Found], list[Found]]:
        """(thread) Entries that need no reading, and the small and the large files to read."""
        previous = {e.path: e for e in self._previous.entries} if self._previous else {}
        trusted_before = self._previous.scan_ns - RACY_NS if self._previous else 0
        done: dict[str, Entry] = {}
        to_read: list[Found] = []
        for found in tree.entries:
            if found.kind != "f":
                done[found.path] = Entry(
                    found.path, found.kind, found.mode, 0, found.mtime_ns, target=found.target
                )
                continue
            _check_size(found.path, found.size)
            old = previous.get(found.path)
            unchanged = (
                old is not None
                and old.kind == "f"
                and (old.size, old.mtime_ns, old.mode) == (found.size, found.mtime_ns, found.mode)
                and found.mtime_ns < trusted_before
                and (0 != old.ctime_ns == found.ctime_ns or found.ctime_ns < self._restored_before)
            )
            if unchanged and old is not None and not _is_inline(old):
                done[found.path] = replace(_current(old), ctime_ns=found.ctime_ns)
            else:
                to_read.append(found)
        self._index_previous()
        self._move_out_of_sparse(done, to_read)
        small = [found for found in to_read if found.size <= self._small]
        return done, small, [found for found in to_read if found.size > self._small]

    def _index_previous(self) -> None:
        """Every small-file content the previous snapshot stored, to reference instead of re-upload."""
        for entry in self._previous.entries if self._previous else ():
            if len(entry.pieces) == 1 and entry.pieces[0].obj.startswith("packs/"):
                self._by_hash.setdefault(entry.hash, entry.pieces[0])

    def _sparse_packs(self, entries: dict[str, Entry]) -> set[str]:
        """Packs whose bytes still used by unchanged files fell under SPARSE of their size."""
        live: dict[str, set[tuple[int, int]]] = {}
        for entry in entries.values():
            for piece in entry.pieces:
                live.setdefault(piece.obj, set()).add((piece.offset, piece.stored))
        return {
            obj
            for obj, pieces in live.items()
            if obj.startswith("packs/")
            and sum(stored for _, stored in pieces) < SPARSE * self._known.get(obj, 0)
        }

    def _move_out_of_sparse(self, done: dict[str, Entry], to_read: list[Found]) -> None:
        """Files living in mostly-dead packs are read again into the new pack, so those packs can go."""
        sparse = self._sparse_packs(done)
        for path, entry in list(done.items()):
            if any(piece.obj in sparse for piece in entry.pieces):
                del done[path]
                to_read.append(Found(path, "f", entry.mode, entry.size, entry.mtime_ns))
        for obj in sparse:
            del self._known[obj]
        self._by_hash = {h: p for h, p in self._by_hash.items() if p.obj not in sparse}
        to_read.sort(key=lambda found: found.path)

    # ---- small files: packs -----------------------------------------------------------------------

    async def _store_small(self, reader: Reader, files: list[Found]) -> list[Found]:
        """Pack the small files; returns those that turned out large when read.

        When everything fits in one batch of at most INLINE_BYTES, it stays in the manifest
        (`self._inline`) instead of becoming a pack: a small change then costs one object.
        """
        batches = _batches(files)
        grown: list[Found] = []
        for index, batch in enumerate(batches):
            pack = Pack(INLINE)
            entries, grown_here = await settled(self._fill_pack, reader, batch, pack)
            grown += grown_here
            if len(batches) == 1 and len(pack.data) <= INLINE_BYTES:
                self._inline = bytes(pack.data)
            elif pack.data:
                entries = await self._publish(pack, pack_key(self._seq, index), entries)
            self._read_entries.update(entries)
        return grown

    async def _publish(self, pack: Pack, key: str, entries: dict[str, Entry]) -> dict[str, Entry]:
        """Store a filled pack under `key`; returns its `entries` with their pieces pointing
        there instead of INLINE."""
        await self._store.put(f"{self._prefix}/{key}", bytes(pack.data))
        self._totals.uploaded_bytes += len(pack.data)
        self._known[key] = len(pack.data)
        return await settled(self._point_to, key, entries)

    def _point_to(self, key: str, entries: dict[str, Entry]) -> dict[str, Entry]:
        """(thread) The pieces of the pack just stored point at `key` instead of INLINE: in the
        index of stored contents, and in `entries` (the pack's files), which are returned."""

        def moved(piece: Piece) -> Piece:
            return replace(piece, obj=key) if piece.obj == INLINE else piece

        self._by_hash = {h: moved(p) for h, p in self._by_hash.items()}
        return {
            path: replace(e, pieces=tuple(moved(p) for p in e.pieces)) if _is_inline(e) else e
            for path, e in entries.items()
        }

    def _fill_pack(
        self, reader: Reader, batch: list[Found], pack: Pack
    ) -> tuple[dict[str, Entry], list[Found]]:
        """(thread) Read, hash and append each file; files that grew past the limit are returned."""
        entries: dict[str, Entry] = {}
        grown: list[Found] = []
        for found in batch:
            opened = reader.open_file(found.path)
            if opened is None:
                continue
            fd, st = opened
            try:
                data = _read_up_to(fd, self._small + 1)
            finally:
                os.close(fd)
            if len(data) > self._small:
                grown.append(Found(found.path, "f", found.mode, len(data), found.mtime_ns))
                continue
            self._totals.hashed_files += 1
            hash_ = digest(data)
            pieces: tuple[Piece, ...] = ()
            if data:
                if hash_ not in self._by_hash:
                    self._by_hash[hash_] = pack.add(data, hash_, self._compress)
                pieces = (self._by_hash[hash_],)
            mode = st.st_mode & 0o7777
            entries[found.path] = Entry(
                found.path, "f", mode, len(data), st.st_mtime_ns, hash_, "", pieces, st.st_ctime_ns
            )
        return entries, grown

    # ---- large files: chunk blobs -----------------------------------------------------------------

    async def _store_large(self, reader: Reader, found: Found) -> Entry | None:
        """A file as chunk blobs and holes, read up to the size it had when opened."""
        opened = await settled(reader.open_file, found.path)
        if opened is None:
            return None
        fd, st = opened
        pieces: list[Piece] = []
        try:
            _check_size(found.path, st.st_size)
            offset = 0
            while chunk := await settled(_next_piece, fd, offset, st.st_size, self._compress):
                piece, stored = chunk
                _append(pieces, piece)
                offset += piece.size
                if piece.obj != HOLE and piece.obj not in self._known:
                    await self._store.put(f"{self._prefix}/{piece.obj}", stored)
                    self._known[piece.obj] = len(stored)
                    self._totals.uploaded_bytes += len(stored)
        finally:
            os.close(fd)
        self._totals.hashed_files += 1
        mode = st.st_mode & 0o7777
        hash_ = chunked_hash(pieces)
        return Entry(found.path, "f", mode, offset, st.st_mtime_ns, hash_, "", tuple(pieces), st.st_ctime_ns)

    # ---- result -----------------------------------------------------------------------------------

    def _manifest(self, done: dict[str, Entry], tree: Scan, created_at: float, scan_ns: int) -> Manifest:
        """(thread) The new manifest: every entry stored (`done` and the files read), in walk order."""
        done.update(self._read_entries)
        entries = tuple(done[f.path] for f in tree.entries if f.path in done)
        objects = {
            p.obj: self._known[p.obj] for e in entries for p in e.pieces if p.obj not in (INLINE, HOLE)
        }
        return Manifest(
            seq=self._seq,
            created_at=created_at,
            scan_ns=scan_ns,
            entries=entries,
            objects=objects,
            uploaded_bytes=self._totals.uploaded_bytes,
            hashed_files=self._totals.hashed_files,
            skipped=tree.skipped,
            inline=self._inline,
            links=_hard_links(tree, done),
        )


def _hard_links(tree: Scan, entries: dict[str, Entry]) -> dict[str, str]:
    """Each stored file that shares its inode with an earlier stored file of the walk → that file's
    path, when both entries agree (a name replaced by another file during the walk does not)."""
    first_of: dict[int, str] = {}
    links: dict[str, str] = {}
    for found in tree.entries:
        if not found.inode or found.path not in entries:
            continue
        first = first_of.setdefault(found.inode, found.path)
        if first != found.path and _same_file(entries[first], entries[found.path]):
            links[found.path] = first
    return links


def _same_file(a: Entry, b: Entry) -> bool:
    return (a.kind, a.size, a.hash, a.mode, a.mtime_ns) == (b.kind, b.size, b.hash, b.mode, b.mtime_ns)


def _is_inline(entry: Entry) -> bool:
    return any(piece.obj == INLINE for piece in entry.pieces)


def _batches(files: list[Found]) -> list[list[Found]]:
    """Consecutive runs of files of at most PACK_BYTES (by walk size) each."""
    batches: list[list[Found]] = []
    budget = PACK_BYTES
    for found in files:
        if budget + found.size > PACK_BYTES or not batches:
            batches.append([])
            budget = 0
        batches[-1].append(found)
        budget += found.size
    return batches


def _read_up_to(fd: int, limit: int) -> bytes:
    parts: list[bytes] = []
    remaining = limit
    while remaining > 0 and (part := os.read(fd, min(remaining, 1 << 20))):
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _next_piece(fd: int, offset: int, end: int, compress: bool) -> tuple[Piece, bytes] | None:
    """(thread) The piece of a large file at `offset` and its stored bytes; None at `end` or the
    end of the file. The blocks from `offset` that hold no data are one hole, found without
    reading them; otherwise the piece is data up to CHUNK_BYTES, ending early where a hole of at
    least MIN_HOLE_BYTES begins, so that reading costs about what the file's data holds, not its
    size (a byte every 4 MiB must not mean reading 4 MiB per byte). A dense file is cut into the
    fixed chunks it always was. A data piece read and found to be all zeros is a hole too (zeros
    written out and holes store alike: not at all)."""
    holes = _hole_bytes(fd, offset, end)
    if holes:
        return hole(holes), b""
    data = _pread_up_to(fd, offset, _data_bytes(fd, offset, end))
    if not data:
        return None
    if data == bytes(len(data)):
        return hole(len(data)), b""
    hash_ = digest(data)
    codec, stored = encode(data, compress)
    return Piece(blob_key(hash_, codec), 0, len(stored), len(data), codec, hash_), stored


def _hole_bytes(fd: int, offset: int, end: int) -> int:
    """(thread) How many bytes of whole blocks from `offset` up to `end` hold no data, by
    SEEK_DATA (a file system without holes says every byte is data)."""
    data_at = _seek(fd, offset, os.SEEK_DATA)
    return max(0, min(data_at, end) - offset) // HOLE_BLOCK_BYTES * HOLE_BLOCK_BYTES


def _data_bytes(fd: int, offset: int, end: int) -> int:
    """(thread) How many bytes from `offset` (where data begins) to read as one piece: up to
    CHUNK_BYTES or `end`, or up to the first hole of at least MIN_HOLE_BYTES (smaller holes are
    read as zeros: a piece per small hole would cost more objects than the reading it saves)."""
    limit = min(end, offset + CHUNK_BYTES)
    at = offset
    while True:
        hole_at = _seek(fd, at, os.SEEK_HOLE)
        if hole_at >= limit:
            return limit - offset
        data_at = _seek(fd, hole_at, os.SEEK_DATA)
        if data_at - hole_at >= MIN_HOLE_BYTES or data_at >= limit or data_at <= at:
            return max(hole_at - offset, min(HOLE_BLOCK_BYTES, limit - offset))
        at = data_at  # a small hole: read on, up to the next one


def _seek(fd: int, offset: int, whence: int) -> int:
    """(thread) lseek for SEEK_DATA or SEEK_HOLE; past the last data (ENXIO), the file's size.
    A file system that knows no holes has one at the end of the file."""
    try:
        return os.lseek(fd, offset, whence)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            return offset if whence == os.SEEK_DATA else os.fstat(fd).st_size
        return max(offset, os.fstat(fd).st_size)


def _pread_up_to(fd: int, offset: int, limit: int) -> bytes:
    parts: list[bytes] = []
    while limit > 0 and (part := os.pread(fd, min(limit, 1 << 20), offset)):
        parts.append(part)
        offset += len(part)
        limit -= len(part)
    return b"".join(parts)


def _append(pieces: list[Piece], piece: Piece) -> None:
    """Add `piece` to a file's pieces, a hole after a hole as one longer hole."""
    if piece.obj == HOLE and pieces and pieces[-1].obj == HOLE:
        pieces[-1] = hole(pieces[-1].size + piece.size)
    else:
        pieces.append(piece)


def _current(entry: Entry) -> Entry:
    """An unchanged entry of the previous manifest, in the form a persist writes today: a chunked
    file's blobs of zeros as holes and its hash over its chunks (manifests written before holes
    were kept have zero-chunk blobs and the sha256 of all its bytes). Other entries are as they
    were. Without this, a file stored before and a new hard link to it would not be seen as one."""
    if not entry.pieces or not all(p.obj == HOLE or p.obj.startswith("blobs/") for p in entry.pieces):
        return entry
    pieces: list[Piece] = []
    for piece in entry.pieces:
        _append(pieces, hole(piece.size) if is_zero_chunk(piece) else piece)
    return replace(entry, hash=chunked_hash(pieces), pieces=tuple(pieces))


def _check_size(path: str, size: int) -> None:
    """A file a snapshot cannot hold (its restore would be refused) stops the persist."""
    if size > MAX_FILE_BYTES:
        raise Conflict(
            f"file {path[:200]!r} is {size} bytes long (holes included), and a snapshot keeps "
            f"files of at most {MAX_FILE_BYTES >> 40} TiB: delete it or shrink it (truncate -s) and "
            "try again"
        )
