"""HolderSlots: at most so many of something at once per holder (a sandbox), waiting beyond.

The package mirrors' upstream work runs on a few shared threads; without a per-sandbox bound, one
sandbox asking for many pages or files at once would queue every other sandbox behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

PAGES_PER_SANDBOX = 2
"""upstream page (or npm document) fetches one sandbox has under way at once"""
DOWNLOADS_PER_SANDBOX = 2
"""files one sandbox waits for at once (a download another started and it joins is free)"""


class HolderSlots:
    """At most `per_holder` at once for each holder; a holder's entry lives while it waits or holds."""

    def __init__(self, per_holder: int) -> None:
        self._per_holder = per_holder
        self._slots: dict[str, tuple[asyncio.Semaphore, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, holder: str) -> AsyncIterator[None]:
        semaphore, users = self._slots.get(holder, (asyncio.Semaphore(self._per_holder), 0))
        self._slots[holder] = (semaphore, users + 1)
        try:
            async with semaphore:
                yield
        finally:
            semaphore, users = self._slots[holder]
            if users > 1:
                self._slots[holder] = (semaphore, users - 1)
            else:
                del self._slots[holder]
