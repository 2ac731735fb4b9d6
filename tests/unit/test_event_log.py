"""A command's event log: bounded for late readers, held (nothing dropped) for the reader that
waits for the command's result, released when that reader stalls or leaves."""

from __future__ import annotations

import asyncio

from agentcell.protocol.commands import OutputEvent, StartEvent
from agentcell.server.scheduler.processes import BUFFER_LIMIT_BYTES, EventLog

CHUNK = "x" * (64 << 10)
CHUNKS = 3 * BUFFER_LIMIT_BYTES // len(CHUNK)  # three buffers' worth


def new_log(**options: object) -> EventLog:
    log = EventLog(**options)  # type: ignore[arg-type]
    log.events.append(StartEvent(process_id="proc_1", pid=1))
    return log


async def write_all(log: EventLog) -> None:
    for _ in range(CHUNKS):
        await log.append(OutputEvent(type="stdout", data=CHUNK))


async def test_an_unheld_log_keeps_only_the_last_buffer_and_never_waits() -> None:
    log = new_log()
    await asyncio.wait_for(write_all(log), 1)
    assert log.output_bytes <= BUFFER_LIMIT_BYTES and log.first_index > 0


async def test_a_held_log_makes_its_writer_wait_for_the_reader() -> None:
    log = new_log(held=True)
    writer = asyncio.create_task(write_all(log))
    await asyncio.sleep(0.05)
    assert not writer.done() and log.writer_waiting  # a buffer's worth unread: the writer waits
    seen, index = 0, 1  # the reader has the start event
    while seen < CHUNKS:
        new = list(log.events)[index - log.first_index :]
        seen, index = seen + len(new), index + len(new)
        log.consumed(index)
        await asyncio.sleep(0)
    await asyncio.wait_for(writer, 1)
    assert seen == CHUNKS and log.output_bytes <= BUFFER_LIMIT_BYTES  # every chunk reached the reader


async def test_what_the_holder_read_stays_for_other_readers_within_the_budget() -> None:
    """A second reader (another connection to a terminal) still gets output the holder has read."""
    log = new_log(held=True)
    for text in ("one", "two", "three"):
        await log.append(OutputEvent(type="stdout", data=text))
    log.consumed(log.first_index + len(log.events))
    assert [e.data for e in log.events if isinstance(e, OutputEvent)] == ["one", "two", "three"]


async def test_a_reader_that_stalls_loses_its_hold() -> None:
    log = new_log(held=True, stall_s=0.05)
    await asyncio.wait_for(write_all(log), 2)  # waits once for 0.05 s, then drops as unheld
    assert not log.held and log.output_bytes <= BUFFER_LIMIT_BYTES


async def test_a_reader_that_leaves_releases_the_writer() -> None:
    log = new_log(held=True)
    writer = asyncio.create_task(write_all(log))
    await asyncio.sleep(0.05)
    assert not writer.done()
    log.release()
    await asyncio.wait_for(writer, 1)
