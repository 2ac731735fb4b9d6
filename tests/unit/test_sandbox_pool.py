"""SandboxPool and its claim hook in SandboxService, on the FakeDriver and a FakeClock."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from agentcell.errors import QuotaExceeded, Unavailable
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.server.clock import FakeClock
from agentcell.server.observability.registry import Registry
from agentcell.server.sandbox.driver import SandboxSpec
from agentcell.server.sandbox.fake import FakeDriver
from agentcell.server.scheduler.sandbox_pool import BURST_MEMORY_S, QUIET_S, SandboxPool, default_spec
from agentcell.server.scheduler.sandboxes import SandboxService, new_sandbox_id
from tests.service_loop import running

PIDS = 64


class GatedDriver(FakeDriver):
    """A FakeDriver whose spawns wait while `gate` is closed (so that creates stay in flight
    together), and which knows its live instances."""

    def __init__(self) -> None:
        self._scratch = tempfile.TemporaryDirectory(prefix="agentcell-test-")
        super().__init__(Path(self._scratch.name))
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0
        self.alive: set[str] = set()
        self.most_alive = 0

    async def start(self, spec: SandboxSpec) -> None:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        await super().start(spec)
        self.alive.add(spec.sandbox_id)
        self.most_alive = max(self.most_alive, len(self.alive))

    async def stop(self, sandbox_id: str, grace_s: float = 2.0) -> None:
        self.alive.discard(sandbox_id)
        await super().stop(sandbox_id, grace_s)

    async def aclose(self) -> None:
        await super().aclose()
        self._scratch.cleanup()


@dataclass
class Env:
    service: SandboxService
    pool: SandboxPool
    driver: GatedDriver
    clock: FakeClock
    registry: Registry

    async def fill(self) -> None:
        """Refill until full, as the background loop would once the node is quiet."""
        self.clock.advance(QUIET_S)
        while await self.pool.refill_once(self.clock.now()):
            pass

    def metric(self, needle: str) -> float:
        lines = [line for line in self.registry.exposition().splitlines() if line.startswith(needle + " ")]
        return float(lines[0].split()[-1])


def make_pool(
    driver: FakeDriver,
    clock: FakeClock,
    size: int,
    registry: Registry | None = None,
    max_size: int | None = None,
) -> SandboxPool:
    spec = default_spec(PIDS)
    return SandboxPool(
        driver, clock, size=size, max_size=max_size, spec=spec, new_id=new_sandbox_id, registry=registry
    )


@contextlib.asynccontextmanager
async def running_service(
    size: int,
    max_size: int | None = None,
    driver: GatedDriver | None = None,
    max_sandboxes: int = 40,
    pool_loop: bool = False,
) -> AsyncIterator[Env]:
    """A SandboxService with a pool on a GatedDriver, the service's background loop running (and
    the pool's, if `pool_loop`)."""
    driver, clock, registry = driver or GatedDriver(), FakeClock(), Registry()
    pool = make_pool(driver, clock, size, registry, max_size=max_size)
    service = SandboxService(
        driver, clock, max_sandboxes=max_sandboxes, pids_max=PIDS, stop_grace_s=0.1, pool=pool
    )
    try:
        async with running(service):
            pool_started = asyncio.Event()
            pool_task = asyncio.create_task(pool.run(pool_started)) if pool_loop else None
            if pool_task is not None:
                await pool_started.wait()
            try:
                yield Env(service, pool, driver, clock, registry)
            finally:
                if pool_task is not None:
                    pool_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await pool_task
                await pool.aclose()
    finally:
        await driver.aclose()


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    """A pool of 3 that never grows."""
    async with running_service(3) as built:
        yield built


async def test_a_default_create_claims_a_pooled_instance_and_keeps_its_id(env: Env) -> None:
    await env.fill()
    pooled = env.pool.idle_ids()
    spawned = len(env.driver.started)
    sandbox = await env.service.create(SandboxCreate())
    assert sandbox.id in pooled and sandbox.id.startswith("sbx_")
    assert len(env.driver.started) == spawned, "no spawn for a claim"
    assert env.pool.ready == 2 and sandbox.id not in env.pool.idle_ids()
    assert env.metric('agentcell_sandbox_pool_claims_total{result="hit"}') == 1
    assert env.metric("agentcell_sandbox_pool_ready") == 2


async def test_a_claim_rewrites_cpu_and_memory_and_starts_the_clock_at_claim(env: Env) -> None:
    await env.fill()
    env.clock.advance(1000)
    sandbox = await env.service.create(SandboxCreate(cpu=0.25, memory_mb=128, timeout_s=60))
    spec = env.driver.spec(sandbox.id)
    assert (spec.cpu_millis, spec.memory_bytes, spec.pids_max) == (250, 128 << 20, PIDS)
    assert sandbox.created_at == env.clock.now()
    assert sandbox.expires_at == env.clock.now() + 60
    assert sandbox.meter.since == env.clock.now()


async def test_pooled_instances_are_never_listed_or_found(env: Env) -> None:
    await env.fill()
    assert env.service.find({}) == []
    for pooled in env.pool.idle_ids():
        with pytest.raises(Exception, match="not found"):
            env.service.get(pooled)


async def test_concurrent_claims_never_share_an_instance(env: Env) -> None:
    await env.fill()
    sandboxes = await asyncio.gather(*(env.service.create(SandboxCreate()) for _ in range(5)))
    ids = [s.id for s in sandboxes]
    assert len(set(ids)) == 5
    assert env.pool.ready == 0
    assert env.metric('agentcell_sandbox_pool_claims_total{result="hit"}') == 3
    assert env.metric('agentcell_sandbox_pool_claims_total{result="miss"}') == 2


@pytest.mark.parametrize(
    "request_",
    [SandboxCreate(disk_mb=64), SandboxCreate(network={"egress": "open"})],
    ids=["other disk", "other network"],
)
async def test_requests_the_pool_cannot_serve_spawn(env: Env, request_: SandboxCreate) -> None:
    await env.fill()
    pooled = env.pool.idle_ids()
    sandbox = await env.service.create(request_)
    assert sandbox.id not in pooled
    assert env.driver.started[-1].sandbox_id == sandbox.id
    assert env.pool.idle_ids() == pooled


async def test_refills_wait_for_a_quiet_node_and_go_one_at_a_time(env: Env) -> None:
    await env.fill()
    await env.service.create(SandboxCreate())
    assert not await env.pool.refill_once(env.clock.now()), "a create just came: no refill yet"
    env.clock.advance(QUIET_S / 2)
    assert not await env.pool.refill_once(env.clock.now())
    env.clock.advance(QUIET_S / 2)
    assert await env.pool.refill_once(env.clock.now())
    assert env.pool.ready == 3
    assert not await env.pool.refill_once(env.clock.now()), "full"


async def test_a_missed_create_also_delays_refills(env: Env) -> None:
    await env.service.create(SandboxCreate(disk_mb=64))
    assert not await env.pool.refill_once(env.clock.now())


async def test_a_resume_keeps_its_own_id(env: Env) -> None:
    await env.fill()
    pooled = env.pool.idle_ids()
    sandbox = await env.service.create(SandboxCreate(), sandbox_id="sbx_resumed0000000")
    assert sandbox.id == "sbx_resumed0000000"
    assert env.pool.idle_ids() == pooled


@contextlib.asynccontextmanager
async def running_pool(
    root: Path, size: int, max_size: int | None = None
) -> AsyncIterator[tuple[SandboxPool, FakeDriver, FakeClock]]:
    """A pool on a FakeDriver (and a FakeClock that stands still) with its own loop running."""
    driver, clock = FakeDriver(root), FakeClock()
    pool = make_pool(driver, clock, size, max_size=max_size)
    started = asyncio.Event()
    task = asyncio.create_task(pool.run(started))
    try:
        await started.wait()
        yield pool, driver, clock
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.aclose()
        await driver.aclose()


async def test_an_idle_instance_that_dies_is_removed(tmp_path: Path) -> None:
    async with running_pool(tmp_path, 2) as (pool, driver, _):
        await wait_for(lambda: pool.ready == 2)
        dead = pool.idle_ids()[0]
        driver.crash(dead)
        await wait_for(lambda: dead not in pool.idle_ids())
        await wait_for(lambda: pool.ready == 2)  # refilled (the fake clock stands still: quiet)


async def test_aclose_stops_every_idle_instance(tmp_path: Path) -> None:
    driver, clock = FakeDriver(tmp_path), FakeClock()
    pool = make_pool(driver, clock, 2)
    clock.advance(QUIET_S)
    while await pool.refill_once(clock.now()):
        pass
    ids = pool.idle_ids()
    await pool.aclose()
    assert pool.ready == 0
    for sandbox_id in ids:
        with pytest.raises(Exception, match="no instance"):
            await driver.usage(sandbox_id)
    assert not await pool.refill_once(clock.now() + 60), "closed: no refills"
    await driver.aclose()


class BrokenDriver(FakeDriver):
    async def start(self, spec: SandboxSpec) -> None:
        raise Unavailable("no namespaces here")


async def test_failed_refills_back_off(tmp_path: Path) -> None:
    driver, clock = BrokenDriver(tmp_path), FakeClock()
    pool = make_pool(driver, clock, 2)
    assert not await pool.refill_once(clock.now())
    assert not await pool.refill_once(clock.now() + 0.5), "backing off"
    await driver.aclose()


def test_a_negative_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="0 or more"):
        make_pool(FakeDriver(tmp_path), FakeClock(), -1)


def test_size_zero_never_refills(tmp_path: Path) -> None:
    pool = make_pool(FakeDriver(tmp_path), FakeClock(), 0)
    assert pool.fits(replace(default_spec(PIDS), sandbox_id="x"))
    assert asyncio.run(pool.refill_once(0.0)) is False


def test_the_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from agentcell.server.settings import Settings

    monkeypatch.setenv("AGENTCELL_SANDBOX_POOL", "-1")
    with pytest.raises(ValidationError, match="AGENTCELL_SANDBOX_POOL must be between 0"):
        Settings()
    monkeypatch.setenv("AGENTCELL_SANDBOX_POOL", "0")
    assert Settings().sandbox_pool == 0
    monkeypatch.setenv("AGENTCELL_SANDBOX_POOL_MAX", "1001")
    with pytest.raises(ValidationError, match="AGENTCELL_SANDBOX_POOL_MAX must be between 0 and 1000"):
        Settings()


async def wait_for(condition: object, timeout_s: float = 5.0) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


class LimitlessDriver(GatedDriver):
    async def set_limits(self, sandbox_id: str, cpu_millis: int, memory_bytes: int, pids_max: int) -> None:
        raise OSError("memory.limit_in_bytes: Device or resource busy")


async def test_an_instance_that_cannot_take_the_limits_is_dropped_and_the_create_spawns() -> None:
    async with running_service(1, driver=LimitlessDriver()) as env:
        env.clock.advance(QUIET_S)
        assert await env.pool.refill_once(env.clock.now())
        pooled = env.pool.idle_ids()[0]
        sandbox = await env.service.create(SandboxCreate(memory_mb=128))
        assert sandbox.id != pooled and env.driver.started[-1].sandbox_id == sandbox.id
        with pytest.raises(Exception, match="no instance"):
            await env.driver.usage(pooled)


@pytest.fixture
async def growing() -> AsyncIterator[Env]:
    """A pool of 2 that may grow to 6 for bursts."""
    async with running_service(2, max_size=6) as built:
        yield built


async def burst(env: Env, count: int, request: SandboxCreate | None = None) -> list[str]:
    """`count` creates in flight at once: claims are instant, spawns wait until all have begun.
    Returns the sandbox ids."""
    env.driver.gate.clear()
    creates = [asyncio.create_task(env.service.create(request or SandboxCreate())) for _ in range(count)]
    await wait_for(lambda: sum(c.done() for c in creates) + env.driver.waiting == count)
    env.driver.gate.set()
    return [sandbox.id for sandbox in await asyncio.gather(*creates)]


async def test_the_pool_grows_to_the_creates_in_flight_at_once(growing: Env) -> None:
    """Two claims (instant), then five spawns in flight together: the pool grows to 5."""
    await growing.fill()
    assert growing.pool.ready == 2
    await burst(growing, 7)
    assert growing.pool.target(growing.clock.now()) == 5
    assert growing.metric("agentcell_sandbox_pool_target") == 5
    await growing.fill()
    assert growing.pool.ready == 5
    spawned = len(growing.driver.started)
    await burst(growing, 5)
    assert len(growing.driver.started) == spawned, "the second burst of 5 was served by the pool"


async def test_growth_stops_at_the_max(growing: Env) -> None:
    await burst(growing, 9)
    assert growing.pool.target(growing.clock.now()) == 6
    await growing.fill()
    assert growing.pool.ready == 6


@pytest.mark.parametrize("apart_s", [0.0, QUIET_S * 0.1, QUIET_S * 1.1])
async def test_creates_one_after_another_are_never_a_burst(growing: Env, apart_s: float) -> None:
    """However close together: each create is alone in flight (the earlier pool counted creates
    less than the quiet period apart as one burst)."""
    for _ in range(5):
        await growing.service.create(SandboxCreate())
        growing.clock.advance(apart_s)
    assert growing.pool.target(growing.clock.now()) == 2


async def test_create_then_delete_in_a_row_never_grows_the_pool_past_the_node() -> None:
    """The exploratory tester's leak (AGENTCELL_MAX_SANDBOXES=2, AGENTCELL_SANDBOX_POOL=1, 40
    create-then-delete calls in a row): the pool stays at 1, never more than 2 instances live."""
    async with running_service(1, max_size=64, max_sandboxes=2) as env:
        await env.fill()
        for _ in range(40):
            sandbox = await env.service.create(SandboxCreate())
            await env.service.kill(sandbox.id)
            env.clock.advance(QUIET_S * 0.3)
        assert env.pool.target(env.clock.now()) == 1
        await env.fill()
        assert env.pool.ready == 1
        assert env.driver.most_alive <= 2


async def test_the_target_leaves_room_for_live_sandboxes() -> None:
    """Idle + live never exceed max_sandboxes, however large the burst the pool remembers."""
    async with running_service(2, max_size=6, max_sandboxes=4) as env:
        await burst(env, 4)
        assert env.pool.target(env.clock.now()) == 0, "4 live on a node of 4: no room for idle ones"
        await env.fill()
        assert env.pool.ready == 0
        for sandbox in env.service.all()[:3]:
            await env.service.kill(sandbox.id)
        assert env.pool.target(env.clock.now()) == 3, "the burst of 4, in the room 1 live one leaves"
        await env.fill()
        assert env.pool.ready == 3
        assert env.driver.most_alive <= 4


async def test_a_create_at_the_node_max_claims_an_idle_instance() -> None:
    """Idle instances do not count against max_sandboxes: the last create the node takes claims
    one, the next is refused."""
    async with running_service(2, max_sandboxes=2) as env:
        await env.fill()
        first = await env.service.create(SandboxCreate())
        last = await env.service.create(SandboxCreate())
        assert env.metric('agentcell_sandbox_pool_claims_total{result="hit"}') == 2
        assert {first.id, last.id} <= set(env.driver.alive) and env.pool.ready == 0
        with pytest.raises(QuotaExceeded, match="at most 2 sandboxes"):
            await env.service.create(SandboxCreate())


@pytest.mark.parametrize(
    "request_, sandbox_id",
    [(SandboxCreate(disk_mb=64), None), (SandboxCreate(), "sbx_resumed0000000")],
    ids=["a create the pool cannot serve", "a resume"],
)
async def test_a_spawn_on_a_full_node_stops_idle_instances_first(
    request_: SandboxCreate, sandbox_id: str | None
) -> None:
    async with running_service(2, max_sandboxes=2) as env:
        await env.fill()
        pooled = env.pool.idle_ids()
        await env.service.create(SandboxCreate(disk_mb=64))
        assert env.pool.idle_ids() == pooled[1:], "one live, one idle"
        sandbox = await env.service.create(request_, sandbox_id=sandbox_id)
        assert env.pool.ready == 0 and sandbox.id not in pooled
        assert env.driver.most_alive == 2


async def test_the_pool_refills_when_a_sandbox_frees_room() -> None:
    async with running_service(1, max_sandboxes=1, pool_loop=True) as env:
        await wait_for(lambda: env.pool.ready == 1)
        sandbox = await env.service.create(SandboxCreate())
        env.clock.advance(QUIET_S)
        await asyncio.sleep(0.05)
        assert env.pool.ready == 0, "no room beside the live sandbox"
        await env.service.kill(sandbox.id)
        await wait_for(lambda: env.pool.ready == 1)
        assert env.driver.most_alive == 1


async def test_a_burst_the_pool_serves_whole_keeps_its_size(growing: Env) -> None:
    """Claims are instant, so a burst served by the pool shows no concurrency; taking every idle
    instance shows the pool is not too large."""
    await burst(growing, 5)
    await growing.fill()
    growing.clock.advance(BURST_MEMORY_S - 1)
    await burst(growing, 5)
    growing.clock.advance(BURST_MEMORY_S - 1)
    assert growing.pool.target(growing.clock.now()) == 5
    growing.clock.advance(2)
    assert growing.pool.target(growing.clock.now()) == 2, "forgotten"


async def test_creates_the_pool_cannot_serve_do_not_grow_it(growing: Env) -> None:
    await burst(growing, 5, SandboxCreate(disk_mb=64))
    assert growing.pool.target(growing.clock.now()) == 2


async def test_a_forgotten_burst_is_trimmed_one_at_a_time_while_quiet(growing: Env) -> None:
    await burst(growing, 5)
    await growing.fill()
    grown = growing.pool.idle_ids()
    assert len(grown) == 5
    growing.clock.advance(BURST_MEMORY_S)
    assert growing.pool.target(growing.clock.now()) == 2
    await growing.service.create(SandboxCreate(disk_mb=64))  # not the pool's spec, but not quiet
    assert not await growing.pool.trim_once(growing.clock.now()), "a create just came"
    growing.clock.advance(QUIET_S)
    while await growing.pool.trim_once(growing.clock.now()):
        pass
    assert growing.pool.idle_ids() == grown[3:], "the oldest went first"
    for stopped in grown[:3]:
        with pytest.raises(Exception, match="no instance"):
            await growing.driver.usage(stopped)


async def test_a_fixed_pool_never_grows(env: Env) -> None:
    await burst(env, 8)
    assert env.pool.target(env.clock.now()) == 3


async def test_a_full_pool_waits_for_a_claim_and_then_refills(tmp_path: Path) -> None:
    async with running_pool(tmp_path, 1, max_size=4) as (pool, _, clock):
        await wait_for(lambda: pool.ready == 1)
        with contextlib.ExitStack() as in_flight:  # a burst of 3
            for _ in range(3):
                in_flight.enter_context(pool.creating(default_spec(PIDS)))
                await pool.claim(default_spec(PIDS))
        clock.advance(QUIET_S)  # (the loop sleeps the quiet period in real time, then refills)
        await wait_for(lambda: pool.ready == 3)
