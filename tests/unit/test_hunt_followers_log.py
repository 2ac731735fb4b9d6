"""How followers read a process's event log: from its tail (never a copy of the whole buffer), what
came while they were away in one batch, the start event again when they fell behind what the log
keeps, and at most MAX_FOLLOWERS at once, a place freed when a follower's iterator ends or is
dropped unstarted. A fake pipe feeds a real ManagedProcess."""

from __future__ import annotations

import asyncio
import gc

import pytest

from agentcell.errors import QuotaExceeded
from agentcell.protocol.commands import EndEvent, OutputEvent, StartEvent
from agentcell.server.sandbox.driver import ExitStatus, TerminalSize
from agentcell.server.scheduler.processes import BUFFER_LIMIT_BYTES, MAX_FOLLOWERS, EventLog, ManagedProcess


class FakePipeProcess:
    """A SandboxProcess whose output is fed by the test and which exits when told (or killed)."""

    pid = host_pid = 7

    def __init__(self) -> None:
        self.stdout, self.stderr = asyncio.StreamReader(), asyncio.StreamReader()
        self.stderr.feed_eof()
        self._exited = asyncio.Event()

    async def write_stdin(self, data: bytes) -> None:
        pass

    async def close_stdin(self) -> None:
        pass

    def send_signal(self, signum: int) -> None:
        self.exit()

    def resize(self, size: TerminalSize) -> None:
        pass

    async def wait(self) -> ExitStatus:
        await self._exited.wait()
        return ExitStatus(0)

    def exit(self) -> None:
        self.stdout.feed_eof()
        self._exited.set()


def new_log() -> EventLog:
    log = EventLog()
    log.events.append(StartEvent(process_id="proc_1", pid=1))
    return log


def texts(events: list[StartEvent | OutputEvent | EndEvent]) -> list[str]:
    return [e.data if isinstance(e, OutputEvent) else e.type for e in events]


async def test_a_follower_that_keeps_up_reads_only_what_is_new() -> None:
    log = new_log()
    batch, index = await log.read(0)
    assert texts(batch) == ["start"]
    for text in ("a", "b"):
        await log.append(OutputEvent(type="stdout", data=text))
    batch, index = await log.read(index)
    assert texts(batch) == ["a", "b"] and index == log.end_index
    assert log.since(index) == []


async def test_a_follower_that_fell_behind_gets_the_start_event_again() -> None:
    """Its next event was dropped: it reads the whole buffer again from the start event, the
    way it learns it missed output (the oldest output kept follows)."""
    log = new_log()
    _, index = await log.read(0)
    big = "x" * (BUFFER_LIMIT_BYTES // 4)
    for n in range(8):
        await log.append(OutputEvent(type="stdout", data=f"{n}{big}"))
    assert log.first_index >= index  # the event after the start one has gone
    batch, _ = await log.read(index)
    assert isinstance(batch[0], StartEvent) and batch[1:] == list(log.events)[1:]


async def test_what_came_while_a_follower_was_away_is_one_batch() -> None:
    fake = FakePipeProcess()
    process = ManagedProcess(fake, ["x"], "/", None)
    process.start()
    batches = process.follow()
    assert texts(await anext(batches)) == ["start"]
    for n in range(5):
        fake.stdout.feed_data(f"{n}\n".encode())
        await asyncio.sleep(0)  # each a read of the pipe, an event of its own
    batch = texts(await anext(batches))
    assert len(batch) > 1 and "".join(batch) == "0\n1\n2\n3\n4\n"
    fake.exit()
    assert [type(e) for b in [b async for b in batches] for e in b][-1] is EndEvent
    await process.wait()


async def test_followers_past_the_cap_are_refused_until_one_goes() -> None:
    fake = FakePipeProcess()
    process = ManagedProcess(fake, ["x"], "/", None)
    process.start()
    followers = [process.follow() for _ in range(MAX_FOLLOWERS)]
    await anext(followers[0])  # a started one and unstarted ones count alike
    with pytest.raises(QuotaExceeded, match=f"has {MAX_FOLLOWERS} followers") as refused:
        process.follow()
    assert refused.value.retry_after_s == 1

    await followers.pop(0).aclose()  # closed: its place is free
    followers.append(process.follow())
    followers.pop()  # dropped before it began (its client left before the answer started)
    gc.collect()
    followers.append(process.follow())

    async for _ in process.events():  # the starter's reader is not a follower
        break
    fake.exit()
    await process.wait()
