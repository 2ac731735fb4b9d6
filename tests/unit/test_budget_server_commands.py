"""The server-wide command budget: every sandbox's process table takes a slot of one shared
CommandBudget before a start, a running command holds one until it ends, and a start past it is
refused with 503 `unavailable` naming the limit, without touching the sandbox's own budgets. The
limit is derived from the open-file limit (what connections and sandboxes leave, per command)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.errors import QuotaExceeded, Unavailable
from agentcell.server.egress.node import total_connection_limit
from agentcell.server.sandbox.driver import ExecSpec, SandboxSpec
from agentcell.server.sandbox.fake import FakeDriver
from agentcell.server.scheduler.command_budget import (
    FDS_PER_COMMAND,
    FDS_PER_PROXIED_CONNECTION,
    FDS_PER_SANDBOX,
    FDS_RESERVED,
    MIN_COMMANDS,
    CommandBudget,
    server_command_limit,
)
from agentcell.server.scheduler.processes import CommandLimits, ManagedProcess, ProcessTable


def test_the_limit_is_what_the_open_files_leave_per_command() -> None:
    proxied = 1_048_576 // 16 * FDS_PER_PROXIED_CONNECTION  # the egress proxy's node-wide cap
    spare = 1_048_576 - 10_000 - 4000 * FDS_PER_SANDBOX - proxied - FDS_RESERVED
    assert server_command_limit(0, 10_000, 4000, open_files=1_048_576) == spare // FDS_PER_COMMAND
    left_at_40k = 40_000 - 10_000 - 4000 * FDS_PER_SANDBOX - 5_000 - FDS_RESERVED
    assert server_command_limit(0, 10_000, 4000, open_files=40_000) == left_at_40k // FDS_PER_COMMAND
    assert server_command_limit(0, 10_000, 4000, open_files=4096) == MIN_COMMANDS  # the floor
    assert server_command_limit(7, 10_000, 4000, open_files=4096) == 7  # AGENTCELL_MAX_COMMANDS


def test_the_limit_leaves_the_egress_proxys_connections_their_descriptors() -> None:
    """Sandboxes may hold up to the proxy's node-wide cap of proxied connections, two server fds
    each, at the same time as the commands: the budget counts them out first."""
    open_files = 65_536
    held_by_proxy = total_connection_limit(open_files) * FDS_PER_PROXIED_CONNECTION
    assert held_by_proxy == 8_192  # an eighth of the open files
    commands = server_command_limit(0, 1000, 100, open_files=open_files)
    left = open_files - 1000 - 100 * FDS_PER_SANDBOX - held_by_proxy - FDS_RESERVED
    assert commands == left // FDS_PER_COMMAND
    everything = commands * FDS_PER_COMMAND + held_by_proxy + 1000 + 100 * FDS_PER_SANDBOX + FDS_RESERVED
    assert everything <= open_files


def test_this_hosts_limit_leaves_commands_more_than_the_floor() -> None:
    """20,000 fds (these VMs, whose root may not raise its hard limit): the default shares of
    client connections, sandboxes and proxied connections leave commands hundreds of slots."""
    connections = 20_000 // 4  # Settings.connection_limit's default share
    assert server_command_limit(0, connections, 4000, open_files=20_000) == 869


def test_a_full_budget_refuses_with_unavailable_naming_the_limit() -> None:
    budget = CommandBudget(2)
    budget.take()
    budget.take()
    with pytest.raises(Unavailable, match="runs 2 commands across all sandboxes, its limit of 2") as err:
        budget.take()
    assert "AGENTCELL_MAX_COMMANDS" in err.value.message and err.value.retry_after_s == 1
    budget.give()
    budget.take()
    assert budget.running == 2


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[FakeDriver]:
    fake = FakeDriver(tmp_path)
    for sandbox_id in ("sbx_a", "sbx_b"):
        await fake.start(SandboxSpec(sandbox_id=sandbox_id))
    try:
        yield fake
    finally:
        await fake.aclose()


async def start(driver: FakeDriver, sandbox_id: str, table: ProcessTable, script: str) -> ManagedProcess:
    with table.starting():
        process = ManagedProcess(
            await driver.exec(sandbox_id, ExecSpec(argv=["sh", "-c", script])), [], "/", 30
        )
        table.add(process)
    process.start()
    return process


async def test_sandboxes_share_the_budget_and_an_ended_command_frees_its_slot(driver: FakeDriver) -> None:
    limits = CommandLimits(max_commands=8, server=CommandBudget(3))
    a, b = limits.table(), limits.table()
    sleepers = [await start(driver, "sbx_a", a, "exec sleep 30") for _ in range(2)]
    quick = await start(driver, "sbx_b", b, "exec sleep 0.2")
    assert limits.server is not None and limits.server.running == 3
    for table in (a, b):
        with pytest.raises(Unavailable, match="limit of 3 commands at once"), table.starting():
            pass
    await asyncio.wait_for(quick.wait(), 10)
    assert limits.server.running == 2, "an ended command gives its slot back"
    await start(driver, "sbx_b", b, "true")
    sleepers[0].kill()
    await asyncio.wait_for(sleepers[0].wait(), 10)
    await a.aclose()
    await b.aclose()
    assert limits.server.running == 0


async def test_a_refused_or_failed_start_takes_no_slot(driver: FakeDriver) -> None:
    server = CommandBudget(4)
    table = ProcessTable(max_commands=1, max_stdin_bytes=1 << 20, server=server)
    await start(driver, "sbx_a", table, "exec sleep 30")
    with pytest.raises(QuotaExceeded, match="limit of 1 commands"), table.starting():
        pass  # the sandbox's own budget is checked first: its message is the caller's to act on
    other = ProcessTable(server=server)
    other.stdin.take_now(64 << 20)
    with pytest.raises(QuotaExceeded, match="stdin"), other.starting(stdin_bytes=1):
        pass
    with pytest.raises(RuntimeError), other.starting():
        raise RuntimeError("the driver could not start it")
    assert server.running == 1
    await table.aclose()
    assert server.running == 0


async def test_a_process_added_but_never_started_gives_its_slot_back_at_close(driver: FakeDriver) -> None:
    server = CommandBudget(4)
    table = ProcessTable(server=server)
    with table.starting():
        table.add(ManagedProcess(await driver.exec("sbx_a", ExecSpec(argv=["true"])), [], "/", 30))
    assert server.running == 1
    await table.aclose()
    assert server.running == 0
