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
from dataclasses import dataclass
from pathlib import Path

from agentcell.server.egress.fetch import Fetcher, FetchError

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
    def __init__(self, root: Path, fetcher: Fetcher) -> None:
        self._root = root
        self._fetcher = fetcher
        self._filling: dict[str, asyncio.Future[Path]] = {}
        self.hits = 0
        self.misses = 0

    def cached(self, key: str) -> Path | None:
        path = self._root / key
        return path if is_key(key) and path.is_file() else None

    async def ensure(self, artifact: Artifact) -> Path:
        """The cached file, downloading and verifying it first if needed (once, however many
        sandboxes ask at the same time). Raises FetchError."""
        key = artifact.key
        path = self.cached(key)
        if path is not None:
            self.hits += 1
            return path
        filling = self._filling.get(key)
        if filling is None:
            self.misses += 1
            filling = asyncio.ensure_future(self._fill(artifact))
            self._filling[key] = filling
            filling.add_done_callback(lambda _: self._filling.pop(key, None))
        return await asyncio.shield(filling)

    async def _fill(self, artifact: Artifact) -> Path:
        self._root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._root / f".{artifact.key}.{secrets.token_hex(4)}.tmp"
        try:
            got = await self._fetcher.download(artifact.url, tmp, artifact.algorithm)
            if artifact.digest is not None and got != artifact.digest:
                raise FetchError(
                    f"{artifact.url} does not match the {artifact.algorithm} the index published "
                    f"({artifact.digest[:16]}…, got {got[:16]}…); it was not cached"
                )
            final = self._root / artifact.key
            os.replace(tmp, final)
            return final
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def remove_partial(self) -> None:
        """Drop temporary files a killed server left (call at start)."""
        for leftover in self._root.glob(".*.tmp") if self._root.is_dir() else ():
            leftover.unlink(missing_ok=True)
