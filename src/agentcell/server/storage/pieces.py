"""How file bytes become stored pieces and back: hashing, optional zlib, packs and chunk blobs.

Small files (≤ SMALL_FILE_BYTES) of one snapshot are concatenated into pack objects of up to
PACK_BYTES; larger files are cut into chunks of up to CHUNK_BYTES (fixed ones where the file is
dense), each stored once as a content-addressed blob, and a run of blocks of zeros is one hole
piece, stored nowhere (persist.py: where a piece of data ends early at a hole).
Why these shapes and sizes: docs/design.md, "Session storage".

A file's content hash is the sha256 of its bytes when it is packed (the hash of its one piece),
and `chunked_hash` of its pieces when it is chunked: the sha256 of its bytes would have to read
every byte of its holes, and a sandbox makes a 1 TiB hole with one `truncate`.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable

from agentcell.server.storage.manifest import CODEC_RAW, CODEC_ZLIB, HOLE, Piece, SnapshotCorrupt

SMALL_FILE_BYTES = 1 << 20
CHUNK_BYTES = 4 << 20
PACK_BYTES = 32 << 20
INLINE_BYTES = 64 << 10  # new small-file bytes up to this stay inside the manifest
PROBE_BYTES = 8 << 10
MIN_COMPRESS_BYTES = 256
WORTH_IT = 0.9  # keep the compressed form only when it saves at least 10%
ZERO_CHUNK_HASH = "bb9f8df61474d25e71fa00722318cd387396ca1736605e1248821cc0de3d3af8"  # of CHUNK_BYTES zeros


def digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def encode(data: bytes, compress: bool) -> tuple[int, bytes]:
    """(codec, stored bytes). Compression is tried only when an 8 KiB probe shrinks by 10%,
    so incompressible data (media, archives, random) costs one small probe, not a full pass."""
    if not compress or len(data) < MIN_COMPRESS_BYTES:
        return CODEC_RAW, data
    probe = data[:PROBE_BYTES]
    if len(zlib.compress(probe, 1)) > WORTH_IT * len(probe):
        return CODEC_RAW, data
    packed = zlib.compress(data, 1)
    if len(packed) > WORTH_IT * len(data):
        return CODEC_RAW, data
    return CODEC_ZLIB, packed


def decode(piece: Piece, stored: bytes | memoryview) -> bytes | memoryview:
    """The raw bytes of `piece`, checked against its hash; SnapshotCorrupt names the object."""
    if len(stored) != piece.stored:
        raise SnapshotCorrupt(f"snapshot object {piece.obj!r} is truncated")
    raw: bytes | memoryview = stored
    if piece.codec == CODEC_ZLIB:
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(stored, piece.size + 1)
        except zlib.error as exc:
            raise SnapshotCorrupt(f"snapshot object {piece.obj!r} does not decompress") from exc
    if len(raw) != piece.size or digest(raw) != piece.hash:
        raise SnapshotCorrupt(f"snapshot object {piece.obj!r} fails its hash check")
    return raw


def hole(size: int) -> Piece:
    """`size` bytes of zeros, stored nowhere."""
    return Piece(HOLE, 0, 0, size, CODEC_RAW, "")


def is_zero_chunk(piece: Piece) -> bool:
    """A blob piece holding a whole chunk of zeros (how manifests stored holes before HOLE)."""
    return piece.hash == ZERO_CHUNK_HASH


def chunked_hash(pieces: Iterable[Piece]) -> str:
    """The content hash of a chunked file: sha256 over the offset (8 bytes, big-endian) and the
    raw sha256 of each piece that is not a hole, then the file's size (8 bytes, big-endian).

    It costs 40 bytes of hashing per data chunk and nothing per hole, and the pieces' own hashes
    are checked against their bytes at every restore, so it identifies the bytes as well as the
    sha256 of all of them would (a persist writes every chunk of zeros as a hole, so one content
    has one form). No restore checks it: it tells entries apart (unchanged files, hard links)."""
    whole = hashlib.sha256()
    offset = 0
    for piece in pieces:
        if piece.obj != HOLE:
            whole.update(offset.to_bytes(8, "big") + bytes.fromhex(piece.hash))
        offset += piece.size
    whole.update(offset.to_bytes(8, "big"))
    return whole.hexdigest()


def blob_key(hash_: str, codec: int) -> str:
    return f"blobs/{hash_}" + (".z" if codec == CODEC_ZLIB else "")


def pack_key(seq: int, index: int) -> str:
    return f"packs/{seq:012d}-{index:04d}"


class Pack:
    """One pack object being filled: pieces are appended; `data` is uploaded when full."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.data = bytearray()

    def add(self, raw: bytes, hash_: str, compress: bool) -> Piece:
        codec, stored = encode(raw, compress)
        piece = Piece(self.key, len(self.data), len(stored), len(raw), codec, hash_)
        self.data += stored
        return piece
