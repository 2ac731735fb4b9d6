"""History retention on a real SQLite meta store: old usage, audit and ended sessions go; recent
history and live sessions stay."""

from __future__ import annotations

from pathlib import Path

from agentcell.server.clock import FakeClock
from agentcell.server.meta.history import HistoryRetention
from agentcell.server.meta.records import AuditRecord, SessionRecord, UsageRecord
from agentcell.server.meta.sqlite import SqliteMetaStore

DAY = 86400.0


def session(session_id: str, state: str, last_active_at: float) -> SessionRecord:
    return SessionRecord(
        session_id, "fn", session_id, 1, None, state, "idle" if state == "ended" else None,
        last_active_at, last_active_at, last_active_at + DAY, 3600, 600,
    )  # fmt: skip


def audit(at: float) -> AuditRecord:
    return AuditRecord(at, "key", "default", "sandbox.create", "sbx_1", 201, "req", "POST", "/v1/sandboxes")


async def test_prune_deletes_only_history_older_than_the_retention(tmp_path: Path) -> None:
    clock = FakeClock()
    now = clock.now()
    old, recent = now - 31 * DAY, now - 29 * DAY
    store = SqliteMetaStore(tmp_path / "meta.db")
    await store.open()
    try:
        await store.put_usage(
            [UsageRecord("t", "sandbox", old - 60, old), UsageRecord("t", "sandbox", recent, recent + 60)]
        )
        await store.append_audits([audit(old)])
        await store.append_audits([audit(recent)])
        await store.put_sessions(
            [
                session("s-old-ended", "ended", old),
                session("s-old-live", "idle", old),
                session("s-new", "ended", recent),
            ]
        )
        retention = HistoryRetention(store, clock, retention_s=30 * DAY)

        assert await retention.prune_once(now) == 3
        assert await retention.prune_once(now) == 0

        assert [u.start for u in await store.usage(None, 0, now + DAY)] == [recent]
        assert [a.at for a in await store.audit(0, now + DAY, None, None, 10)] == [recent]
        assert await store.get_session("s-old-ended") is None
        assert await store.get_session("s-old-live") is not None  # a live session is not history
        assert await store.get_session("s-new") is not None
    finally:
        await store.aclose()
