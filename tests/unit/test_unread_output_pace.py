"""The pace of output nobody reads (processes.UnreadPace): a burst of BUFFER_LIMIT_BYTES, then
UNREAD_OUTPUT_BYTES_PER_S; a process that a holder or a follower reads is never paced. A fake pipe
feeds a real ManagedProcess; the rate is set to one byte a second so that a paced pump stops for
the test's whole length, whatever the machine's speed."""

from __future__ import annotations

import asyncio

import pytest

from agentcell.protocol.commands import OutputEvent
from agentcell.server.scheduler import processes
from agentcell.server.scheduler.processes import (
    BUFFER_LIMIT_BYTES,
    READ_CHUNK_BYTES,
    UNREAD_OUTPUT_BYTES_PER_S,
    ManagedProcess,
    UnreadPace,
)
from tests.unit.test_hunt_followers_log import FakePipeProcess

FED = 4 * BUFFER_LIMIT_BYTES


def test_a_burst_then_the_rate() -> None:
    pace = UnreadPace(at=0.0)
    assert pace.delay(0.0, BUFFER_LIMIT_BYTES) == 0  # the first buffer's worth at once
    assert pace.delay(0.0, UNREAD_OUTPUT_BYTES_PER_S) == pytest.approx(1.0)
    assert pace.delay(1.0, UNREAD_OUTPUT_BYTES_PER_S // 2) == pytest.approx(0.5)
    assert pace.delay(100.0, 0) == 0  # refilled, up to the burst only
    assert pace.tokens == BUFFER_LIMIT_BYTES


@pytest.fixture
def crawling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processes, "UNREAD_OUTPUT_BYTES_PER_S", 1)


class CountingReader(asyncio.StreamReader):
    """A pipe that counts what its reader took."""

    taken = 0

    async def read(self, n: int = -1) -> bytes:
        data = await super().read(n)
        self.taken += len(data)
        return data


async def fed_process() -> tuple[FakePipeProcess, ManagedProcess]:
    pipe = FakePipeProcess()
    pipe.stdout = CountingReader()
    process = ManagedProcess(pipe, ["flood"], "/", None)
    pipe.stdout.feed_data(b"y" * FED)
    return pipe, process


def taken(pipe: FakePipeProcess) -> int:
    assert isinstance(pipe.stdout, CountingReader)
    return pipe.stdout.taken


async def settle() -> None:
    for _ in range(50):
        await asyncio.sleep(0)


@pytest.mark.usefixtures("crawling")
async def test_output_nobody_reads_stops_after_the_burst() -> None:
    pipe, process = await fed_process()
    process.start()
    await settle()
    chunks = BUFFER_LIMIT_BYTES // READ_CHUNK_BYTES + 1  # the one that overdraws the bucket
    assert taken(pipe) == chunks * READ_CHUNK_BYTES
    pipe.exit()
    await process.aclose()


@pytest.mark.usefixtures("crawling")
async def test_a_follower_reads_at_full_speed() -> None:
    """Taken whole while a follower is there (it may drop what it falls behind on, as ever)."""
    pipe, process = await fed_process()
    follower = process.follow()  # a place among the followers from now on, read or not
    process.start()
    for _ in range(3000):  # up to 30 s: paced, it would stay at the burst for good
        if taken(pipe) == FED:
            break
        await asyncio.sleep(0.01)
    assert taken(pipe) == FED
    await follower.aclose()
    pipe.exit()
    await process.aclose()


@pytest.mark.usefixtures("crawling")
async def test_a_holder_reads_at_full_speed() -> None:
    pipe, process = await fed_process()
    process.start()
    got = 0
    async for event in process.events(holder=True):
        if isinstance(event, OutputEvent):
            got += len(event.data)
            if got >= FED:
                break
    assert taken(pipe) == FED
    pipe.exit()
    await process.aclose()
