"""The snapshot manifest: what one snapshot holds, its wire form (JSON + zlib), and its validation.

A manifest lists every entry of a workspace (path, kind, mode, size, mtime, content hash) and,
for regular files, the pieces their bytes live in: a range of a per-snapshot pack object (small
files), whole content-addressed chunk blobs (large files), or a range of the manifest's own inline
area (a few recently changed small files, so that a small change costs one object, not two).

A piece may also be a hole: `size` bytes of zeros stored nowhere (`obj` is HOLE, no offset,
stored bytes or hash). Persists write each run of whole chunks of zeros of a large file (a hole of
a sparse file, or zeros written out) as one such piece, so a 1 TiB sparse file is one piece, not
262,144 references to a chunk of zeros. A manifest without holes (every one written before they
were kept) is as valid as ever; a server that does not know holes refuses a manifest with some
(a bad piece) rather than restoring it wrong.

Files that are hard links of one inode are each listed with their content; `links` names, for every
such file but the first, the first one, so that a restore links them again. The JSON holds `links`
only when there are some: a manifest without it (every one written before links were kept) restores
each file on its own, and a server that does not know `links` ignores it and does the same.

Each file's inode change time when it was read is kept in `ctimes` (one per entry, 0 for others),
only when known: a persist trusts a file unchanged only when its change time is the one recorded
(an mtime is the file owner's to set back, as `cp -p` does). A manifest without it (every one
written before) makes the next persist read every file once; a server that does not know `ctimes`
ignores it.

Stored form: `MAGIC`, the length of the zlib-compressed JSON (8 bytes, big-endian), that JSON, then
the inline bytes. A manifest read back from the store is
hostile until `decode` has validated all of it: nothing is written before that.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agentcell.errors import Conflict, WorkspaceCorrupt

FORMAT_VERSION = 1
MAX_ENTRIES = 1_000_000
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_FILE_BYTES = 1 << 40
MAX_PIECE_BYTES = 64 << 20
MAX_MANIFEST_BYTES = 512 << 20  # after decompression
KINDS = ("f", "d", "l")
CODEC_RAW, CODEC_ZLIB = 0, 1
INLINE = "inline"  # the piece lives in the manifest object itself, after the JSON
HOLE = "hole"  # the piece is zeros, stored nowhere (a hole of a sparse file)
MAGIC = b"ACSNAP1\n"
HEADER_BYTES = len(MAGIC) + 8  # magic, then the compressed JSON's length (u64, big-endian)
HASH_RE = re.compile(r"[0-9a-f]{64}")
OBJECT_RE = re.compile(r"(packs/[0-9]{12}-[0-9]{4}|blobs/[0-9a-f]{64}(\.z)?)")


class SnapshotCorrupt(WorkspaceCorrupt):
    """A snapshot's manifest or one of its objects is missing, malformed or fails its hash.

    The message names the object. Nothing has been written outside the target directory.
    """


@dataclass(frozen=True, slots=True)
class Piece:
    """`size` raw bytes whose sha256 is `hash`, stored as `stored` bytes at `offset` in `obj`
    (or, when `obj` is HOLE, `size` zeros)."""

    obj: str
    offset: int
    stored: int
    size: int
    codec: int
    hash: str

    def to_json(self) -> list[Any]:
        return [self.obj, self.offset, self.stored, self.size, self.codec, self.hash]


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    kind: str  # "f" file, "d" directory, "l" symlink
    mode: int
    size: int = 0
    mtime_ns: int = 0
    hash: str = ""  # a file's content hash (pieces.py: packed: sha256; chunked: over its chunks)
    target: str = ""  # a symlink's target text
    pieces: tuple[Piece, ...] = ()
    ctime_ns: int = 0  # a file's inode change time when it was read (0: not known)

    def to_json(self) -> list[Any]:
        pieces = [piece.to_json() for piece in self.pieces]
        return [self.path, self.kind, self.mode, self.size, self.mtime_ns, self.hash, self.target, pieces]


@dataclass(frozen=True, slots=True)
class Manifest:
    seq: int
    created_at: float
    scan_ns: int  # file-system time when the walk started (decides which mtimes are trustworthy)
    entries: tuple[Entry, ...]
    objects: dict[str, int] = field(default_factory=dict)  # every object referenced → stored size
    uploaded_bytes: int = 0
    hashed_files: int = 0
    skipped: int = 0
    inline: bytes = b""  # recent small files, kept in the manifest itself (pieces in INLINE)
    links: dict[str, str] = field(default_factory=dict)  # hard link's path → first path of its inode

    @property
    def files(self) -> int:
        return sum(1 for entry in self.entries if entry.kind == "f")

    @property
    def logical_bytes(self) -> int:
        return sum(entry.size for entry in self.entries if entry.kind == "f")


def encode(manifest: Manifest) -> bytes:
    """The stored form. CPU-bound for a large workspace (seconds at a million entries): call it in
    a thread, where its long arrays are dumped a slice at a time so that the event loop's thread
    gets the GIL back between slices (one json.dumps would hold it throughout)."""
    entries = manifest.entries
    body: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "seq": manifest.seq,
        "created_at": manifest.created_at,
        "scan_ns": manifest.scan_ns,
        "objects": manifest.objects,
        "uploaded_bytes": manifest.uploaded_bytes,
        "hashed_files": manifest.hashed_files,
        "skipped": manifest.skipped,
        "entries": _Sliced(entries, Entry.to_json),
    }
    if manifest.links:
        body["links"] = sorted(manifest.links.items())
    if any(entry.ctime_ns for entry in entries):
        body["ctimes"] = _Sliced(entries, _ctime)
    text = _dumps(body).encode()
    if len(text) > MAX_MANIFEST_BYTES:  # a restore would refuse it: never store it
        raise Conflict(
            f"the workspace's list of files takes {len(text) >> 20} MiB, more than a snapshot keeps "
            f"({MAX_MANIFEST_BYTES >> 20} MiB): delete (or exclude) some of its files and try again"
        )
    packed = zlib.compress(text, 6)
    return MAGIC + len(packed).to_bytes(8, "big") + packed + manifest.inline


def decode(data: bytes, key: str) -> Manifest:
    """Parse and validate a stored manifest; SnapshotCorrupt (naming `key`) on any defect. Like
    `encode`, for a thread: its long arrays are parsed an item at a time."""
    try:
        if data[: len(MAGIC)] != MAGIC or len(data) < HEADER_BYTES:
            raise ValueError("not a manifest")
        end = HEADER_BYTES + int.from_bytes(data[len(MAGIC) : HEADER_BYTES], "big")
        if end > len(data):
            raise ValueError("truncated")
        inflater = zlib.decompressobj()
        raw = inflater.decompress(data[HEADER_BYTES:end], MAX_MANIFEST_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            raise ValueError("truncated or oversize")
        body = _loads(raw.decode())
        manifest = replace(_from_json(body), inline=data[end:])
        validate(manifest)
    except SnapshotCorrupt as exc:
        raise SnapshotCorrupt(f"snapshot manifest {key!r} is corrupt: {exc.message}") from exc
    except (ValueError, TypeError, KeyError, IndexError, zlib.error, RecursionError) as exc:
        raise SnapshotCorrupt(f"snapshot manifest {key!r} is corrupt: {type(exc).__name__}") from exc
    return manifest


# ---- JSON a slice at a time -----------------------------------------------------------------------

SLICE = 2000
"""array items dumped per json.dumps call: a few ms of holding the GIL"""
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class _Sliced:
    """An array of `to_json(item)` for each item, dumped SLICE items at a time."""

    items: Sequence[Any]
    to_json: Callable[[Any], Any]

    def dumps(self) -> str:
        items, to_json = self.items, self.to_json
        slices = (
            _compact([to_json(item) for item in items[start : start + SLICE]])[1:-1]
            for start in range(0, len(items), SLICE)
        )
        return "[" + ",".join(slices) + "]"


def _ctime(entry: Entry) -> int:
    return entry.ctime_ns


def _dumps(body: dict[str, Any]) -> str:
    """`json.dumps(body, separators=(",", ":"))`, the same text, with `_Sliced` values dumped a
    slice at a time."""
    fields = (
        f"{_compact(key)}:{value.dumps() if isinstance(value, _Sliced) else _compact(value)}"
        for key, value in body.items()
    )
    return "{" + ",".join(fields) + "}"


def _loads(text: str) -> Any:
    """`json.loads(text)` for a JSON object, its arrays parsed an item at a time (see `encode`);
    ValueError on malformed JSON, as json.loads."""
    at = _skip(text, 0)
    if not text.startswith("{", at):
        return json.loads(text)  # not an object: the same answer, or json's error
    body: dict[str, Any] = {}
    at = _skip(text, at + 1)
    if text.startswith("}", at):
        return _ended(text, at + 1, body)
    while True:
        key, at = _DECODER.raw_decode(text, at)
        if not isinstance(key, str):
            raise ValueError(f"an object key is not a string at {at}")
        at = _skip(text, at)
        if not text.startswith(":", at):
            raise ValueError(f"expected ':' at {at}")
        at = _skip(text, at + 1)
        body[key], at = _array(text, at) if text.startswith("[", at) else _DECODER.raw_decode(text, at)
        at = _skip(text, at)
        if text.startswith("}", at):
            return _ended(text, at + 1, body)
        if not text.startswith(",", at):
            raise ValueError(f"expected ',' or '}}' at {at}")
        at = _skip(text, at + 1)


def _array(text: str, at: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    at = _skip(text, at + 1)
    if text.startswith("]", at):
        return items, at + 1
    while True:
        item, at = _DECODER.raw_decode(text, at)
        items.append(item)
        at = _skip(text, at)
        if text.startswith("]", at):
            return items, at + 1
        if not text.startswith(",", at):
            raise ValueError(f"expected ',' or ']' at {at}")
        at = _skip(text, at + 1)


def _ended(text: str, at: int, body: dict[str, Any]) -> dict[str, Any]:
    if _skip(text, at) != len(text):
        raise ValueError(f"extra data at {at}")
    return body


def _skip(text: str, at: int) -> int:
    match = _WHITESPACE.match(text, at)
    assert match is not None  # (the pattern matches the empty string)
    return match.end()


def _from_json(body: dict[str, Any]) -> Manifest:
    if body["version"] != FORMAT_VERSION:
        raise SnapshotCorrupt(f"unknown format version {body['version']!r}")
    entries = tuple(_entry(item) for item in _list(body["entries"]))
    if "ctimes" in body:
        ctimes = [_int(ctime) for ctime in _list(body["ctimes"])]
        if len(ctimes) != len(entries):
            raise SnapshotCorrupt("ctimes do not match its entries")
        entries = tuple(replace(entry, ctime_ns=ctime) for entry, ctime in zip(entries, ctimes, strict=True))
    objects = body["objects"]
    if not isinstance(objects, dict):
        raise TypeError("objects")
    links = [_link(item) for item in _list(body.get("links", []))]
    if len(dict(links)) != len(links):
        raise SnapshotCorrupt("a hard link is listed twice")
    return Manifest(
        seq=_int(body["seq"]),
        created_at=float(body["created_at"]),
        scan_ns=_int(body["scan_ns"]),
        entries=entries,
        objects={_str(k): _int(v) for k, v in objects.items()},
        uploaded_bytes=_int(body["uploaded_bytes"]),
        hashed_files=_int(body["hashed_files"]),
        skipped=_int(body["skipped"]),
        links=dict(links),
    )


def _entry(item: Any) -> Entry:
    path, kind, mode, size, mtime_ns, hash_, target, pieces = _list(item)
    return Entry(
        _str(path),
        _str(kind),
        _int(mode),
        _int(size),
        _int(mtime_ns),
        _str(hash_),
        _str(target),
        tuple(_piece(p) for p in _list(pieces)),
    )


def _link(item: Any) -> tuple[str, str]:
    path, first = _list(item)
    return _str(path), _str(first)


def _piece(item: Any) -> Piece:
    obj, offset, stored, size, codec, hash_ = _list(item)
    return Piece(_str(obj), _int(offset), _int(stored), _int(size), _int(codec), _str(hash_))


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


# ---- validation ----------------------------------------------------------------------------------


def validate(manifest: Manifest) -> None:
    """Every rule a restore relies on; raises SnapshotCorrupt naming the first offending entry."""
    if len(manifest.entries) > MAX_ENTRIES:
        raise SnapshotCorrupt(f"more than {MAX_ENTRIES} entries")
    for key, size in manifest.objects.items():
        if not OBJECT_RE.fullmatch(key) or size < 0:
            raise SnapshotCorrupt(f"bad object reference {key[:80]!r}")
    kinds: dict[str, str] = {}
    sizes = {**manifest.objects, INLINE: len(manifest.inline)}
    for entry in manifest.entries:
        _validate_path(entry.path)
        if entry.path in kinds:
            raise SnapshotCorrupt(f"duplicate entry {entry.path[:200]!r}")
        parent = entry.path.rpartition("/")[0]
        if parent and kinds.get(parent) != "d":
            raise SnapshotCorrupt(f"entry {entry.path[:200]!r} is not inside a directory of the snapshot")
        _validate_entry(entry, sizes)
        kinds[entry.path] = entry.kind
    _validate_links(manifest)


def byte_length(text: str) -> int:
    """The length of a name, path or link target as the file system has it: bytes that are not
    UTF-8 come as surrogate escapes (as `os` gives them), one byte each."""
    return len(text.encode("utf-8", "surrogateescape"))


def _validate_path(path: str) -> None:
    if not path or "\0" in path or path.startswith("/") or byte_length(path) > MAX_PATH_BYTES:
        raise SnapshotCorrupt(f"bad path {path[:200]!r}")
    for name in path.split("/"):
        if name in ("", ".", "..") or byte_length(name) > MAX_NAME_BYTES:
            raise SnapshotCorrupt(f"bad path {path[:200]!r}")


def _validate_entry(entry: Entry, objects: dict[str, int]) -> None:
    where = f"entry {entry.path[:200]!r}"
    if entry.kind not in KINDS:
        raise SnapshotCorrupt(f"{where} has unsupported type {entry.kind[:20]!r}")
    if not 0 <= entry.mode <= 0o7777:
        raise SnapshotCorrupt(f"{where} has bad mode {entry.mode!r}")
    if entry.kind == "l":
        if not entry.target or "\0" in entry.target or byte_length(entry.target) >= MAX_PATH_BYTES:
            raise SnapshotCorrupt(f"{where} has a bad link target")
    elif entry.target:
        raise SnapshotCorrupt(f"{where} has a link target but is not a link")
    if entry.kind != "f":
        if entry.pieces or entry.size:
            raise SnapshotCorrupt(f"{where} is not a file but has content")
        return
    if not 0 <= entry.size <= MAX_FILE_BYTES or not HASH_RE.fullmatch(entry.hash):
        raise SnapshotCorrupt(f"{where} has a bad size or hash")
    if sum(piece.size for piece in entry.pieces) != entry.size:
        raise SnapshotCorrupt(f"{where}: pieces do not add up to its size")
    for piece in entry.pieces:
        _validate_piece(piece, objects, where)


def _validate_links(manifest: Manifest) -> None:
    """Each hard link and the file it links to are two files of the snapshot with one content,
    mode and mtime (as two names of one inode have), and that file is not itself a link."""
    if not manifest.links:
        return
    files = {entry.path: entry for entry in manifest.entries if entry.kind == "f"}
    for path, first in manifest.links.items():
        link, original = files.get(path), files.get(first)
        if (
            link is None
            or original is None
            or first in manifest.links
            or (link.size, link.hash, link.mode, link.mtime_ns)
            != (original.size, original.hash, original.mode, original.mtime_ns)
        ):
            raise SnapshotCorrupt(f"hard link {path[:200]!r} does not name a file like {first[:200]!r}")


def _validate_piece(piece: Piece, objects: dict[str, int], where: str) -> None:
    if piece.obj == HOLE:
        if (piece.offset, piece.stored, piece.codec, piece.hash) != (0, 0, CODEC_RAW, "") or not (
            0 < piece.size <= MAX_FILE_BYTES
        ):
            raise SnapshotCorrupt(f"{where} has a bad hole")
        return
    stored_size = objects.get(piece.obj)
    bad = (
        stored_size is None
        or piece.codec not in (CODEC_RAW, CODEC_ZLIB)
        or not HASH_RE.fullmatch(piece.hash)
        or not 0 < piece.size <= MAX_PIECE_BYTES
        or not 0 < piece.stored <= MAX_PIECE_BYTES
        or piece.offset < 0
        or piece.offset + piece.stored > stored_size
        or (piece.codec == CODEC_RAW and piece.stored != piece.size)
    )
    if bad:
        raise SnapshotCorrupt(f"{where} has a bad piece in {piece.obj[:80]!r}")
