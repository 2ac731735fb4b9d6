"""SandboxService logic on the FakeDriver and a FakeClock: lifecycle, expiry, processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.errors import NotFound, NotRunning, QuotaExceeded
from agentcell.protocol.commands import CommandRequest, EndEvent, OutputEvent, StartEvent
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.server.clock import FakeClock
from agentcell.server.sandbox.fake import FakeDriver
from agentcell.server.scheduler.sandboxes import SandboxService
from tests.service_loop import running


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[SandboxService, FakeDriver, FakeClock]]:
    driver, clock = FakeDriver(tmp_path), FakeClock()
    service = SandboxService(driver, clock, max_sandboxes=3, pids_max=64, stop_grace_s=0.1)
    async with running(service):
        yield service, driver, clock
    await driver.aclose()


async def test_create_passes_resources_to_the_driver(
    env: tuple[SandboxService, FakeDriver, FakeClock],
) -> None:
    service, driver, _ = env
    sandbox = await service.create(SandboxCreate(cpu=0.5, memory_mb=256, disk_mb=64, env={"A": "1"}))
    spec = driver.started[-1]
    assert (spec.sandbox_id, spec.cpu_millis, spec.memory_bytes, spec.disk_bytes) == (
        sandbox.id,
        500,
        256 << 20,
        64 << 20,
    )
    assert sandbox.info().env_keys == ["A"]


async def test_sandbox_env_reaches_every_command_and_calls_override_it(
    env: tuple[SandboxService, FakeDriver, FakeClock],
) -> None:
    service, _, _ = env
    sandbox = await service.create(SandboxCreate(env={"A": "1", "B": "2"}))
    events = await collect(service, sandbox.id, CommandRequest(cmd='echo "$A$B"', env={"B": "3"}))
    assert "".join(e.data for e in events if isinstance(e, OutputEvent)) == "13\n"


async def test_unknown_template_is_refused_with_the_list(
    env: tuple[SandboxService, FakeDriver, FakeClock],
) -> None:
    service, driver, _ = env
    with pytest.raises(NotFound, match="template 'nope' not found; available: base"):
        await service.create(SandboxCreate(template="nope"))
    assert driver.started == []


async def test_node_capacity_is_enforced(env: tuple[SandboxService, FakeDriver, FakeClock]) -> None:
    service, _, _ = env
    for _ in range(3):
        await service.create(SandboxCreate())
    with pytest.raises(QuotaExceeded) as caught:
        await service.create(SandboxCreate())
    assert caught.value.retry_after_s


async def test_expiry_ends_exactly_at_the_deadline_and_renewal_moves_it(
    env: tuple[SandboxService, FakeDriver, FakeClock],
) -> None:
    service, _, clock = env
    sandbox = await service.create(SandboxCreate(timeout_s=10))
    clock.advance(9.9)
    assert await service.expire_once(clock.now()) == []
    service.set_timeout(sandbox.id, 30)
    clock.advance(29.9)
    assert await service.expire_once(clock.now()) == []
    clock.advance(0.1)
    assert await service.expire_once(clock.now()) == [sandbox.id]
    with pytest.raises(NotFound):
        service.get(sandbox.id)


async def test_list_filters_by_metadata(env: tuple[SandboxService, FakeDriver, FakeClock]) -> None:
    service, _, _ = env
    a = await service.create(SandboxCreate(metadata={"team": "a", "k": "1"}))
    await service.create(SandboxCreate(metadata={"team": "b"}))
    assert [s.id for s in service.find({"team": "a"})] == [a.id]
    assert len(service.find({})) == 2
    assert service.find({"team": "a", "k": "2"}) == []


async def test_instance_death_ends_the_sandbox(env: tuple[SandboxService, FakeDriver, FakeClock]) -> None:
    service, driver, _ = env
    sandbox = await service.create(SandboxCreate())
    driver.crash(sandbox.id)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if sandbox.state == "ended":
            break
    assert sandbox.state == "ended"
    with pytest.raises(NotFound):
        service.running(sandbox.id)


async def collect(service: SandboxService, sandbox_id: str, request: CommandRequest) -> list[object]:
    process = await service.start_process(sandbox_id, request)
    return [event async for event in service.run_foreground(process, sandbox_id)]


async def test_command_stream_is_typed_and_ends_once(
    env: tuple[SandboxService, FakeDriver, FakeClock],
) -> None:
    service, _, _ = env
    sandbox = await service.create(SandboxCreate())
    events = await collect(service, sandbox.id, CommandRequest(cmd="echo out; echo err >&2; exit 3"))
    assert isinstance(events[0], StartEvent)
    assert isinstance(events[-1], EndEvent) and events[-1].exit_code == 3
    assert sum(isinstance(e, EndEvent) for e in events) == 1
    text = {
        k: "".join(e.data for e in events if isinstance(e, OutputEvent) and e.type == k)
        for k in ("stdout", "stderr")
    }
    assert text == {"stdout": "out\n", "stderr": "err\n"}


async def test_timeout_kills_and_says_so(env: tuple[SandboxService, FakeDriver, FakeClock]) -> None:
    service, _, _ = env
    sandbox = await service.create(SandboxCreate())
    events = await collect(service, sandbox.id, CommandRequest(argv=["sleep", "30"], timeout_s=0.2))
    end = events[-1]
    assert isinstance(end, EndEvent) and end.timed_out and end.exit_code == 137 and end.signal == 9


async def test_stopped_processes_end_with_the_reason(
    env: tuple[SandboxService, FakeDriver, FakeClock],
) -> None:
    """stop_all (a server shutting down) kills every running process; each `end` gives the reason
    to every reader, the foreground one included. Finished processes are not counted."""
    service, _, _ = env
    sandbox = await service.create(SandboxCreate())
    done = await service.start_process(sandbox.id, CommandRequest(argv=["true"], background=True))
    await done.wait()
    sleep = CommandRequest(argv=["sleep", "30"])
    foreground = asyncio.create_task(collect(service, sandbox.id, sleep))
    background = await service.start_process(sandbox.id, sleep.model_copy(update={"background": True}))
    await asyncio.sleep(0.05)
    assert sandbox.processes.stop_all("going away") == 2
    end = (await asyncio.wait_for(foreground, 5))[-1]
    assert isinstance(end, EndEvent) and (end.exit_code, end.error) == (137, "going away")
    assert (await background.wait()).error == "going away" and (await done.wait()).error is None
    assert sandbox.processes.stop_all("again") == 0


async def test_background_process_replays_output_and_takes_stdin(
    env: tuple[SandboxService, FakeDriver, FakeClock],
) -> None:
    service, _, _ = env
    sandbox = await service.create(SandboxCreate())
    process = await service.start_process(sandbox.id, CommandRequest(argv=["cat"], background=True))
    await process.write_stdin(b"hello\n", close=False)
    await process.write_stdin(b"", close=True)
    events = [e async for e in service.process(sandbox.id, process.process_id).events()]
    assert "".join(e.data for e in events if isinstance(e, OutputEvent)) == "hello\n"
    assert isinstance(events[-1], EndEvent) and events[-1].exit_code == 0
    assert service.process(sandbox.id, process.process_id).info().running is False


async def test_a_killed_sandbox_refuses_commands(env: tuple[SandboxService, FakeDriver, FakeClock]) -> None:
    service, _, _ = env
    sandbox = await service.create(SandboxCreate())
    await service.kill(sandbox.id)
    with pytest.raises(NotFound):
        await service.start_process(sandbox.id, CommandRequest(cmd="true"))


async def test_a_sandbox_being_paused_takes_no_new_command(
    env: tuple[SandboxService, FakeDriver, FakeClock],
) -> None:
    """Its files are being saved: a command started now would run frozen, then be stopped, and
    what it did would be missing from the snapshot (it once answered exit code 0)."""
    service, _, _ = env
    sandbox = await service.create(SandboxCreate())
    service.get(sandbox.id).pausing = True
    with pytest.raises(NotRunning, match="being paused"):
        await service.start_process(sandbox.id, CommandRequest(cmd="true"))
    service.get(sandbox.id).pausing = False  # (a pause that failed: the sandbox runs on)
    assert await (await service.start_process(sandbox.id, CommandRequest(cmd="true"))).wait() is not None


async def test_stdin_to_an_exited_process_is_a_conflict(
    env: tuple[SandboxService, FakeDriver, FakeClock],
) -> None:
    service, _, _ = env
    sandbox = await service.create(SandboxCreate())
    process = await service.start_process(sandbox.id, CommandRequest(argv=["true"], background=True))
    await process.wait()
    with pytest.raises(NotRunning):
        await process.write_stdin(b"late", close=False)


async def test_a_private_create_is_private_before_its_id_is_answered(
    env: tuple[SandboxService, FakeDriver, FakeClock],
) -> None:
    """Every create-like path (native, E2B, fork, snapshot start, resume) goes through create,
    which restricts the sandbox's ports itself; a public one is left alone."""
    service, _, _ = env
    private = await service.create(SandboxCreate(ports="private"))
    public = await service.create(SandboxCreate())
    resumed = await service.create(SandboxCreate(ports="private"), sandbox_id="sbx_resumed")
    assert service.traffic.is_private(private.id) and service.traffic.is_private(resumed.id)
    assert not service.traffic.is_private(public.id)
    assert not service.traffic.admits(private.id, None)
    assert service.traffic.admits(private.id, service.traffic.token(private.id).encode())


@pytest.mark.parametrize("ending", ["timeout", "shutdown"])
async def test_a_slow_stop_holds_no_other_sandbox(
    env: tuple[SandboxService, FakeDriver, FakeClock], ending: str
) -> None:
    """Sandboxes that expire together, or that a shutdown ends, are stopped side by side: one whose
    stop takes its whole grace (a command that ignores SIGTERM) does not keep the next one
    running, and billed, past its deadline, nor a shutdown waiting for their sum."""
    service, driver, clock = env
    slow = await service.create(SandboxCreate(timeout_s=10))
    quick = await service.create(SandboxCreate(timeout_s=10))
    release = asyncio.Event()
    stop = driver.stop

    async def stop_waiting_for_the_slow_one(sandbox_id: str, grace_s: float = 2.0) -> None:
        if sandbox_id == slow.id:
            await release.wait()
        await stop(sandbox_id, grace_s)

    driver.stop = stop_waiting_for_the_slow_one  # type: ignore[method-assign]
    clock.advance(10)
    ends = service.expire_once(clock.now()) if ending == "timeout" else service.aclose()
    ending_task = asyncio.create_task(ends)
    try:
        for _ in range(50):
            await asyncio.sleep(0)
        with pytest.raises(NotFound):
            service.get(quick.id)
        assert service.get(slow.id).state == "stopping" and not ending_task.done()
    finally:
        release.set()
    await ending_task
    for sandbox in (slow, quick):
        with pytest.raises(NotFound):
            service.get(sandbox.id)
