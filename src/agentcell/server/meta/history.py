"""HistoryRetention: usage periods, audit records and ended sessions are kept for a retention
period, then deleted, so that the meta store does not grow with every request forever.

    retention = HistoryRetention(store, clock, retention_s=400 * 86400)
    await retention.prune_once(clock.now())       # what the background loop does every interval
"""

from __future__ import annotations

import asyncio
import logging

from agentcell.server.clock import Clock
from agentcell.server.meta.store import MetaStore

log = logging.getLogger(__name__)


class HistoryRetention:
    def __init__(self, store: MetaStore, clock: Clock, *, retention_s: float) -> None:
        self._store = store
        self._clock = clock
        self.retention_s = retention_s

    async def prune_once(self, now: float) -> int:
        """Delete what is older than the retention period; returns how many rows went."""
        gone = await self._store.prune_history(now - self.retention_s)
        if gone:
            log.info("history: deleted %d rows older than %.0f days", gone, self.retention_s / 86400)
        return gone

    async def run(self, interval_s: float, started: asyncio.Event | None = None) -> None:
        """Prune now and then every `interval_s` until cancelled."""
        if started is not None:
            started.set()
        while True:
            try:
                await self.prune_once(self._clock.now())
            except Exception:
                log.exception("history: pruning failed; retrying in %.0f s", interval_s)
            await asyncio.sleep(interval_s)
