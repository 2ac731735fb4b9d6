"""A command's event log stays within its memory budget however its output is chunked: a command
that writes one byte at a time (each read of its pipe an event of its own) must not make the
server keep a million events for late readers."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from agentcell.protocol.commands import OutputEvent, StartEvent
from agentcell.server.scheduler.processes import BUFFER_LIMIT_BYTES, EventLog


def new_log(**options: object) -> EventLog:
    log = EventLog(**options)  # type: ignore[arg-type]
    log.events.append(StartEvent(process_id="proc_1", pid=1))
    return log


async def test_one_byte_chunks_are_kept_within_the_buffer_budget() -> None:
    """50000 one-character events (about 25 MB as Python objects) leave at most about one
    buffer's worth of memory held by the log, and the newest output is what is kept."""
    log = new_log()
    tracemalloc.start()
    try:
        for i in range(50_000):
            await log.append(OutputEvent(type="stdout", data=chr(ord("a") + i % 26)))
        gc.collect()  # what the log holds, not garbage the collector has yet to free (CI flake)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 2 * BUFFER_LIMIT_BYTES, f"the log holds {held} bytes in {len(log.events)} events"
    assert isinstance(log.events[-1], OutputEvent) and log.events[-1].data == chr(ord("a") + 49_999 % 26)
    assert isinstance(log.events[0], StartEvent)


async def test_a_held_log_of_tiny_chunks_makes_its_writer_wait() -> None:
    """The reader that waits for the result holds the log: tiny chunks it has not read count
    against the budget too, so the writer waits instead of growing the log without bound."""
    log = new_log(held=True)

    async def write() -> None:
        for _ in range(200_000):
            await log.append(OutputEvent(type="stdout", data="x"))

    writer = asyncio.create_task(write())
    await asyncio.sleep(0.2)
    try:
        assert log.writer_waiting and len(log.events) < 10_000
    finally:
        log.release()
        await asyncio.wait_for(writer, 10)
