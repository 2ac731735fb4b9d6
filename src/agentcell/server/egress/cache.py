"""ArtifactCache: the node-local, content-addressed store of downloaded package files.

Files are named by the digest the index published for them (`sha256-<hex>`, `sha512-<hex>`) and
verified against it before they are kept, so no sandbox (nor a broken upstream) can put other bytes
under that name. A file the index gave no digest for is named by its URL (`url-<sha256 of URL>`).
Only the server writes here; sandboxes read through the proxy and never see the directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from agentcell.server.egress.fetch import Fetcher, FetchError
from agentcell.server.egress.slots import DOWNLOADS_PER_SANDBOX, HolderSlots

KEY = re.compile(r"^(sha256-[0-9a-f]{64}|sha512-[0-9a-f]{128}|url-[0-9a-f]{64})$")


@dataclass(frozen=True, slots=True)
class Artifact:
    """A file an index page pointed at: where it lives upstream and what it must hash to."""

    url: str
    algorithm: str = "sha256"
    digest: str | None = None

    @property
    def key(self) -> str:
        if self.digest is not None:
            return f"{self.algorithm}-{self.digest}"
        return "url-" + hashlib.sha256(self.url.encode()).hexdigest()


def is_key(text: str) -> bool:
    return bool(KEY.fullmatch(text))


class ArtifactCache:
    """At most `max_bytes` of files: past it, the least recently used go (sandboxes choose what to
    download, and the disk is every tenant's); a file larger than that is not downloaded at all."""

    def __init__(self, root: Path, fetcher: Fetcher, max_bytes: int = 1 << 62) -> None:
        self._root = root
        self._fetcher = fetcher
        self._max_bytes = max_bytes
        self._filling: dict[str, asyncio.Future[Path]] = {}
        self._slots = HolderSlots(DOWNLOADS_PER_SANDBOX)
        self._sizes: OrderedDict[str, int] = self._scan(root)
        self.size_bytes = sum(self._sizes.values())
        self.hits = 0
        self.misses = 0

    def cached(self, key: str) -> Path | None:
        path = self._root / key
        if not is_key(key) or not path.is_file():
            return None
        if key in self._sizes:
            self._sizes.move_to_end(key)
        return path

    async def ensure(self, artifact: Artifact, holder: str = "") -> Path:
        """The cached file, downloading and verifying it first if needed (once, however many
        sandboxes ask at the same time). `holder` (a sandbox id) waits for files not yet cached
        at most DOWNLOADS_PER_SANDBOX at a time, so that one sandbox's downloads leave the
        download threads to others too. Raises FetchError."""
        path = self.cached(artifact.key)
        if path is not None:
            self.hits += 1
            return path
        filling = self._filling.get(artifact.key)
        if filling is not None:  # joining a download under way takes no slot
            return await asyncio.shield(filling)
        async with self._slots.hold(holder):
            path = self.cached(artifact.key)  # (filled while this waited for a slot?)
            if path is not None:
                self.hits += 1
                return path
            return await asyncio.shield(self._filling.get(artifact.key) or self._start(artifact))

    def _start(self, artifact: Artifact) -> asyncio.Future[Path]:
        key = artifact.key
        self.misses += 1
        filling = asyncio.ensure_future(self._fill(artifact))
        self._filling[key] = filling
        filling.add_done_callback(lambda _: self._filling.pop(key, None))
        return filling

    async def _fill(self, artifact: Artifact) -> Path:
        self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._root / f".{artifact.key}.{secrets.token_hex(4)}.tmp"
        try:
            got = await self._fetcher.download(artifact.url, tmp, artifact.algorithm, self._max_bytes)
            if artifact.digest is not None and got != artifact.digest:
                raise FetchError(
                    f"{artifact.url} does not match the {artifact.algorithm} the index published "
                    f"({artifact.digest[:16]}…, got {got[:16]}…); it was not cached"
                )
            final = self._root / artifact.key
            os.replace(tmp, final)
            self._keep(artifact.key, final.stat().st_size)
            return final
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _keep(self, key: str, size: int) -> None:
        """Count a new file in, then remove the least recently used ones past the budget (a
        sandbox still reading one keeps its open file; the next asks upstream again)."""
        self.size_bytes += size - self._sizes.pop(key, 0)
        self._sizes[key] = size
        while self.size_bytes > self._max_bytes and len(self._sizes) > 1:
            old, old_size = self._sizes.popitem(last=False)
            self.size_bytes -= old_size
            (self._root / old).unlink(missing_ok=True)

    @staticmethod
    def _scan(root: Path) -> OrderedDict[str, int]:
        """The files a previous run kept, oldest first."""
        found = []
        for path in root.iterdir() if root.is_dir() else ():
            if is_key(path.name) and path.is_file():
                stat = path.stat()
                found.append((stat.st_mtime, path.name, stat.st_size))
        return OrderedDict((name, size) for _, name, size in sorted(found))

    def remove_partial(self) -> None:
        """Drop temporary files a killed server left (call at start)."""
        for leftover in self._root.glob(".*.tmp") if self._root.is_dir() else ():
            leftover.unlink(missing_ok=True)
