"""Per-sandbox budgets in the process table: queued stdin is capped with backpressure (a write
that does not fit waits for input to be read, then is refused with what to do), and the finished
commands kept for late readers hold a bounded amount of output."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.errors import QuotaExceeded
from agentcell.server.sandbox.driver import ExecSpec, SandboxSpec
from agentcell.server.sandbox.fake import FakeDriver
from agentcell.server.scheduler.processes import FINISHED_KEPT_BYTES, ManagedProcess, ProcessTable
from agentcell.server.scheduler.stdin_budget import StdinBudget

MiB = 1 << 20


async def test_a_write_past_the_budget_waits_for_room_then_goes() -> None:
    budget = StdinBudget(4 * MiB)
    budget.take_now(3 * MiB)
    waiting = asyncio.create_task(budget.take(2 * MiB, wait_s=5))
    await asyncio.sleep(0.05)
    assert not waiting.done() and budget.queued_bytes == 3 * MiB
    budget.give(3 * MiB)  # the reader took the first write
    await asyncio.wait_for(waiting, 1)
    assert budget.queued_bytes == 2 * MiB


async def test_a_write_that_never_fits_is_refused_saying_what_to_do() -> None:
    budget = StdinBudget(4 * MiB)
    budget.take_now(3 * MiB)
    with pytest.raises(
        QuotaExceeded, match=r"3 MiB of stdin .* most the server holds for one sandbox is 4 MiB"
    ) as err:
        await budget.take(2 * MiB, wait_s=0.05)
    assert "kill the ones that never read" in err.value.message and err.value.retry_after_s == 1
    with pytest.raises(QuotaExceeded):
        budget.take_now(2 * MiB)
    assert budget.queued_bytes == 3 * MiB


async def test_one_write_larger_than_the_budget_goes_when_nothing_is_queued() -> None:
    budget = StdinBudget(1 * MiB)
    await budget.take(8 * MiB, wait_s=0)
    budget.give(8 * MiB)
    assert budget.queued_bytes == 0


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[FakeDriver]:
    fake = FakeDriver(tmp_path)
    await fake.start(SandboxSpec(sandbox_id="sbx_budget"))
    try:
        yield fake
    finally:
        await fake.aclose()


async def start(driver: FakeDriver, table: ProcessTable, script: str) -> ManagedProcess:
    with table.starting():
        process = ManagedProcess(
            await driver.exec("sbx_budget", ExecSpec(argv=["sh", "-c", script])), [], "/", 30
        )
        table.add(process)
    process.start()
    return process


async def test_queued_stdin_is_given_back_once_read(driver: FakeDriver) -> None:
    table = ProcessTable(max_stdin_bytes=4 * MiB)
    reader = await start(driver, table, "sleep 2; wc -c")
    await reader.write_stdin(b"z" * (4 * MiB), close=False)  # not read within STDIN_WAIT_S: queued
    assert table.stdin.queued_bytes == 4 * MiB
    await table.stdin.take(1, wait_s=10)  # room comes back once wc has read it all (after its sleep)
    table.stdin.give(1)
    await reader.write_stdin(b"", close=True)
    events = [e async for e in reader.events()]
    assert any(getattr(e, "data", "").strip() == str(4 * MiB) for e in events), events
    assert table.stdin.queued_bytes == 0
    await table.aclose()


async def test_finished_commands_keep_a_bounded_amount_of_output(driver: FakeDriver) -> None:
    table = ProcessTable()
    chatty = [await start(driver, table, "head -c 900000 /dev/zero | tr '\\0' x") for _ in range(24)]
    await asyncio.wait_for(asyncio.gather(*(p.wait() for p in chatty)), 30)
    await start(driver, table, "true")  # a start forgets what is past the bound
    kept = [p for p in table.all() if p in chatty]
    assert 0 < len(kept) < 24 and sum(p.output_bytes for p in kept) <= FINISHED_KEPT_BYTES
    assert kept == chatty[-len(kept) :], "the oldest finished commands go first"
    await table.aclose()


async def test_a_start_past_either_budget_is_refused_and_takes_nothing(driver: FakeDriver) -> None:
    table = ProcessTable(max_commands=2, max_stdin_bytes=MiB)
    await start(driver, table, "exec sleep 30")
    table.stdin.take_now(MiB)
    with pytest.raises(QuotaExceeded, match="stdin"), table.starting(stdin_bytes=1):
        pass
    await start(driver, table, "exec sleep 30")
    with pytest.raises(QuotaExceeded, match="limit of 2 commands at once"), table.starting():
        pass
    assert table.running_count() == 2 and table.stdin.queued_bytes == MiB
    await table.aclose()


async def test_a_write_behind_a_queued_one_waits_for_it(driver: FakeDriver) -> None:
    """Backpressure per process: the second write waits for the reader (which starts after 1.5 s)
    to take the first instead of being refused with a 409."""
    table = ProcessTable()
    reader = await start(driver, table, "sleep 1.5; exec wc -c")
    await reader.write_stdin(b"a" * (2 * MiB), close=False)  # left queued after STDIN_WAIT_S
    await reader.write_stdin(b"b" * (2 * MiB), close=False)
    await reader.stdin_drained()
    await reader.write_stdin(b"", close=True)
    events = [e async for e in reader.events()]
    assert any(getattr(e, "data", "").strip() == str(4 * MiB) for e in events), events
    await table.aclose()
