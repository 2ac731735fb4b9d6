"""PageCache: what a package mirror remembers between requests, bounded.

Every sandbox of the node shares it, and a sandbox chooses what to ask for (any of the index's
hundreds of thousands of projects), so past a budget of bytes the least recently used pages go,
and with each page the file links it carried. A page is fresh for `ttl_s`; an expired one is
fetched again, but its links stay known until the page is replaced or pushed out (pip asks for a
file a moment after the page, which may have expired in between). Forgetting costs a refetch,
never a wrong answer.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from agentcell.server.clock import Clock
from agentcell.server.egress.cache import Artifact

PAGE_CACHE_BYTES = 64 << 20
"""pages, documents and their links kept per mirror"""
LINK_OVERHEAD_BYTES = 200
"""what one remembered link costs beyond its URL (its objects and the index entry)"""


@dataclass(frozen=True, slots=True)
class _Page:
    expires: float
    body: bytes
    keys: tuple[str, ...]
    size_bytes: int


class PageCache:
    """Rewritten pages by name, with the artifacts they link to, `max_bytes` of them together."""

    def __init__(self, clock: Clock, ttl_s: float, max_bytes: int = PAGE_CACHE_BYTES) -> None:
        self._clock = clock
        self._ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._pages: OrderedDict[str, _Page] = OrderedDict()
        self._artifacts: dict[str, tuple[Artifact, int]] = {}
        """key → (artifact, how many kept pages link to it)"""
        self.size_bytes = 0

    def get(self, name: str) -> bytes | None:
        """The page while it is fresh, else None."""
        page = self._pages.get(name)
        if page is None or page.expires <= self._clock.now():
            return None
        self._pages.move_to_end(name)
        return page.body

    def artifact(self, key: str) -> Artifact | None:
        """The artifact a kept page links to under this cache key."""
        entry = self._artifacts.get(key)
        return entry[0] if entry is not None else None

    def put(self, name: str, body: bytes, artifacts: list[Artifact]) -> None:
        """Keep the page and its links (unless they alone are over the budget), forgetting the
        least recently used pages past it."""
        self._drop(name)
        size = len(body) + sum(len(a.url) + LINK_OVERHEAD_BYTES for a in artifacts)
        if size > self._max_bytes:
            return
        keys = tuple(dict.fromkeys(a.key for a in artifacts))
        for artifact in {a.key: a for a in artifacts}.values():
            _, users = self._artifacts.get(artifact.key, (artifact, 0))
            self._artifacts[artifact.key] = (artifact, users + 1)
        self._pages[name] = _Page(self._clock.now() + self._ttl_s, body, keys, size)
        self.size_bytes += size
        while self.size_bytes > self._max_bytes:
            self._drop(next(iter(self._pages)))

    def __len__(self) -> int:
        return len(self._pages)

    def _drop(self, name: str) -> None:
        page = self._pages.pop(name, None)
        if page is None:
            return
        self.size_bytes -= page.size_bytes
        for key in page.keys:
            artifact, users = self._artifacts[key]
            if users > 1:
                self._artifacts[key] = (artifact, users - 1)
            else:
                del self._artifacts[key]
