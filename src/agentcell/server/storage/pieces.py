"""How file bytes become stored pieces and back: hashing, optional zlib, packs and chunk blobs.

Small files (≤ SMALL_FILE_BYTES) of one snapshot are concatenated into pack objects of up to
PACK_BYTES; larger files are cut into fixed CHUNK_BYTES chunks, each stored once as a
content-addressed blob. Why these shapes and sizes: docs/design.md, "Session storage".
"""

from __future__ import annotations

import functools
import hashlib
import zlib

from agentcell.server.storage.manifest import CODEC_RAW, CODEC_ZLIB, Piece, SnapshotCorrupt

SMALL_FILE_BYTES = 1 << 20
CHUNK_BYTES = 4 << 20
PACK_BYTES = 32 << 20
INLINE_BYTES = 64 << 10  # new small-file bytes up to this stay inside the manifest
PROBE_BYTES = 8 << 10
MIN_COMPRESS_BYTES = 256
WORTH_IT = 0.9  # keep the compressed form only when it saves at least 10%


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


@functools.cache
def zero_chunk(compress: bool) -> tuple[Piece, bytes, bytes]:
    """A chunk of zeros (a hole in a sparse file): its blob piece, its stored bytes and its raw
    bytes, computed once: a persist does not read, hash or compress the holes of a file."""
    raw = bytes(CHUNK_BYTES)
    codec, stored = encode(raw, compress)
    hash_ = digest(raw)
    return Piece(blob_key(hash_, codec), 0, len(stored), len(raw), codec, hash_), stored, raw


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
