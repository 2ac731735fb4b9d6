"""The ObjectStore protocol: flat '/'-separated keys to immutable byte strings, and how to open one.

Two implementations sit behind it: `LocalObjectStore` (files under a directory, the embedded
default) and `S3ObjectStore` (any S3-compatible endpoint). The snapshot engine is the only caller
today; it needs atomic whole-object writes, streaming for large objects, listing by prefix and
idempotent deletes, nothing more.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote, urlsplit

from agentcell.errors import InvalidArgument

MAX_KEY_BYTES = 1024
PART_BYTES = 8 << 20  # S3 multipart part size; also the threshold for a multipart upload


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int


class ObjectStore(Protocol):
    """Called by `Snapshots` (and by the scheduler for quotas); every method is safe to call concurrently."""

    async def put(self, key: str, data: bytes) -> None:
        """Create or replace `key` atomically: readers see the old bytes or the new, never a mix."""
        ...

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Like `put` for data that does not fit in memory; returns the number of bytes stored."""
        ...

    async def get(self, key: str) -> bytes:
        """The whole object; raises NotFound when it does not exist."""
        ...

    def get_stream(self, key: str, chunk_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        """The object in chunks; NotFound is raised before the first chunk."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every key starting with `prefix` (a plain string prefix, as in S3), sorted by key."""
        ...

    async def delete(self, key: str) -> None:
        """Remove `key`; deleting a missing key is not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every key under `prefix`; returns how many were removed."""
        ...

    async def aclose(self) -> None: ...


def validate_key(key: str) -> str:
    """Keys are relative '/'-separated paths without empty, '.' or '..' segments or NULs."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument("object key must be a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidArgument(f"object key must be at most {MAX_KEY_BYTES} bytes, got {len(key.encode())}")
    if "\0" in key:
        raise InvalidArgument("object key must not contain NUL bytes")
    if key.startswith("/"):
        raise InvalidArgument(f"object key must be relative (no leading '/'), got {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidArgument(f"object key must not have empty, '.' or '..' segments, got {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key that may end with '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def open_object_store(
    url: str,
    *,
    s3_endpoint: str | None = None,
    s3_region: str = "us-east-1",
    s3_access_key: str | None = None,
    s3_secret_key: str | None = None,
) -> ObjectStore:
    """`file:///abs/dir` or `/abs/dir` → LocalObjectStore; `s3://bucket[/prefix]` → S3ObjectStore."""
    from agentcell.server.storage.local import LocalObjectStore
    from agentcell.server.storage.s3 import S3Config, S3ObjectStore

    if url.startswith("/"):
        return LocalObjectStore(url)
    parts = urlsplit(url)
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path.startswith("/"):
        return LocalObjectStore(unquote(parts.path))
    if parts.scheme == "s3" and parts.netloc and not parts.query and not parts.fragment:
        endpoint = s3_endpoint or f"https://s3.{s3_region}.amazonaws.com"
        prefix = parts.path.strip("/")
        if prefix:
            try:
                validate_key(prefix)
            except InvalidArgument as exc:
                raise InvalidArgument(f"s3://bucket/prefix URL has a bad prefix: {exc.message}") from exc
        config = S3Config(endpoint, parts.netloc, prefix, s3_region, s3_access_key, s3_secret_key)
        return S3ObjectStore(config)
    raise InvalidArgument(
        f"object store URL must be 'file:///absolute/dir', an absolute path, or 's3://bucket[/prefix]', "
        f"got {_redacted(url)!r}"
    )


def _redacted(url: str) -> str:
    """The URL without any `user:secret@` part, for error messages."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
