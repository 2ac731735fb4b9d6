"""The audit log on the real SQLite store, and the structured log setup."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from agentcell.errors import InvalidArgument
from agentcell.server.clock import FakeClock
from agentcell.server.meta.records import AuditRecord
from agentcell.server.meta.sqlite import SqliteMetaStore
from agentcell.server.observability import logs
from agentcell.server.observability.audit import (
    ANONYMOUS_ACTOR,
    ANONYMOUS_BURST,
    AuditLog,
    AuditQuery,
    describe_target,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteMetaStore]:
    meta = SqliteMetaStore(tmp_path / "meta.db")
    await meta.open()
    yield meta
    await meta.aclose()


def entry(at: float, action: str, status: int = 200) -> AuditRecord:
    return AuditRecord(at, "local", "default", action, "", status, f"req_{at:g}", action.split()[0], "/p")


async def test_entries_are_durable_and_queried_by_time_and_action(
    store: SqliteMetaStore, tmp_path: Path
) -> None:
    audit = AuditLog(store, FakeClock())
    for at, action in [
        (10, "POST /v1/sandboxes"),
        (20, "DELETE /v1/sandboxes/{sandbox_id}"),
        (30, "POST /v1/sandboxes"),
    ]:
        audit.append(entry(at, action))
    everything = await audit.query(AuditQuery(0, 100))
    assert [r.at for r in everything] == [10, 20, 30]
    creates = await audit.query(AuditQuery(0, 100, action="POST /v1/sandboxes"))
    assert [r.at for r in creates] == [10, 30]
    assert [r.at for r in await audit.query(AuditQuery(20, 30))] == [20]  # [since, until)
    assert [r.at for r in await audit.query(AuditQuery(0, 100, limit=2))] == [10, 20]
    assert await audit.query(AuditQuery(0, 100, tenant="other")) == []

    reopened = SqliteMetaStore(tmp_path / "meta.db")  # survives a restart
    await reopened.open()
    try:
        assert len(await reopened.audit(0, 100, None, None, 10)) == 3
    finally:
        await reopened.aclose()


def test_queries_are_validated() -> None:
    with pytest.raises(InvalidArgument, match="until must not be before since"):
        AuditQuery(10, 5)
    with pytest.raises(InvalidArgument, match="limit must be between 1 and 1000"):
        AuditQuery(0, 1, limit=0)


class FullDisk:
    """A store whose writes fail, as on a full disk."""

    async def append_audits(self, records: Sequence[AuditRecord]) -> None:
        raise OSError(28, "No space left on device")


async def test_a_failing_store_does_not_fail_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    audit = AuditLog(FullDisk(), FakeClock())  # type: ignore[arg-type]
    audit.append(entry(1, "POST /x"))
    await audit.flush()
    assert "1 audit entries (from req_1 POST /x) could not be written" in caplog.text


class CountingStore:
    """Records each write's batch; the first write waits until released (a busy disk)."""

    def __init__(self) -> None:
        self.batches: list[list[float]] = []
        self.release = asyncio.Event()

    async def append_audits(self, records: Sequence[AuditRecord]) -> None:
        self.batches.append([r.at for r in records])
        if len(self.batches) == 1:
            await self.release.wait()


async def test_entries_queued_during_a_write_go_in_one_batch_and_in_order() -> None:
    store = CountingStore()
    audit = AuditLog(store, FakeClock(), linger_s=0)  # type: ignore[arg-type]
    audit.append(entry(1, "POST /a"))
    await asyncio.sleep(0)  # the writer takes the first entry and waits on the store
    for at in (2, 3, 4):
        audit.append(entry(at, "POST /b"))
    store.release.set()
    await audit.aclose()
    assert store.batches == [[1], [2, 3, 4]]


async def test_entries_appended_within_the_linger_share_one_write() -> None:
    """Sequential requests a few ms apart cost one store write, not one each."""
    store = CountingStore()
    store.release.set()
    audit = AuditLog(store, FakeClock(), linger_s=0.05)  # type: ignore[arg-type]
    for at in (1, 2, 3):
        audit.append(entry(at, "POST /a"))
        await asyncio.sleep(0.005)
    assert store.batches == []
    await asyncio.sleep(0.2)
    assert store.batches == [[1, 2, 3]]


async def test_a_flush_writes_at_once_instead_of_waiting_out_the_linger() -> None:
    store = CountingStore()
    store.release.set()
    audit = AuditLog(store, FakeClock(), linger_s=3600)  # type: ignore[arg-type]
    audit.append(entry(1, "POST /a"))
    await asyncio.sleep(0)
    audit.append(entry(2, "POST /a"))
    await asyncio.wait_for(audit.flush(), 5)
    assert store.batches == [[1, 2]]
    audit.append(entry(3, "POST /a"))  # a new writer lingers again, and aclose hurries it too
    await asyncio.wait_for(audit.aclose(), 5)
    assert store.batches == [[1, 2], [3]]


async def test_a_query_sees_every_entry_appended_before_it(store: SqliteMetaStore) -> None:
    audit = AuditLog(store, FakeClock())
    for at in range(20):
        audit.append(entry(at, "POST /v1/sandboxes"))
    assert len(await audit.query(AuditQuery(0, 100))) == 20


def test_target_is_the_route_parameters() -> None:
    assert describe_target({"sandbox_id": "sbx_1", "key": "k"}) == "key=k,sandbox_id=sbx_1"
    assert describe_target({}) == ""


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("agentcell.test", logging.INFO, __file__, 1, message, None, None)


def test_json_lines_carry_the_ids_bound_in_context() -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("rid", default="-")

    def in_context() -> str:
        request_id.set("req_9")
        logs.bind(session="ses_1", instance="ins_1")
        rec = record("hello")
        logs.ContextFilter({"request_id": request_id}).filter(rec)
        return logs.JsonFormatter().format(rec)

    line = json.loads(contextvars.copy_context().run(in_context))
    assert line["message"] == "hello" and line["level"] == "info"
    assert (line["request_id"], line["session"], line["instance"]) == ("req_9", "ses_1", "ins_1")
    assert "tenant" not in line  # unknown ids are left out


async def test_tasks_inherit_ids_and_add_their_own() -> None:
    seen: dict[str, dict[str, str]] = {}

    async def child() -> None:
        logs.bind(instance="ins_2")
        seen["child"] = dict(logs.bound())

    async def parent() -> None:
        logs.bind(session="ses_2")
        await asyncio.create_task(child())
        seen["parent"] = dict(logs.bound())

    await asyncio.create_task(parent())
    assert seen["child"] == {"session": "ses_2", "instance": "ins_2"}
    assert seen["parent"] == {"session": "ses_2"}  # a child's ids stay in the child


def test_text_format_has_the_id_slots() -> None:
    rec = record("hi")
    logs.ContextFilter().filter(rec)
    text = logging.Formatter(logs.TEXT_FORMAT).format(rec)
    assert text.endswith("agentcell.test [- - -]: hi")


async def test_entries_without_a_valid_key_are_kept_only_up_to_a_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Anyone can send a refused request: a flood of them keeps a burst and then a few a second
    (and a warning says how many were dropped), and never crowds out a keyed entry."""
    store = CountingStore()
    store.release.set()
    clock = FakeClock()
    audit = AuditLog(store, clock, linger_s=0)  # type: ignore[arg-type]

    def anonymous(at: float) -> AuditRecord:
        return AuditRecord(
            at, ANONYMOUS_ACTOR, "", "POST /v1/sandboxes", "", 401, "r", "POST", "/v1/sandboxes"
        )

    for _ in range(ANONYMOUS_BURST + 30):
        audit.append(anonymous(clock.now()))
    audit.append(entry(clock.now(), "POST /keyed"))
    await audit.flush()
    kept = [at for batch in store.batches for at in batch]
    assert len(kept) == ANONYMOUS_BURST + 1  # the burst, and the keyed one
    for _ in range(70):  # one a second for 70 s: each fits the refilled budget again
        clock.advance(1)
        audit.append(anonymous(clock.now()))
        for _ in range(20):  # ... and a flood beside it, dropped and counted
            audit.append(anonymous(clock.now()))
    await audit.aclose()
    kept = [at for batch in store.batches for at in batch]
    assert ANONYMOUS_BURST + 1 + 70 * 4 <= len(kept) <= ANONYMOUS_BURST + 1 + 70 * 6
    assert "audit entries of requests without a valid key were not kept" in caplog.text
