"""The node's capacity (AGENTCELL_MAX_SANDBOXES) shared by sandboxes, function instances and the
sandbox pool's idle instances: a SandboxService, a Scheduler and a SandboxPool wired to one
NodeCapacity as app.py wires them, on the FakeDriver, a real SQLite store and a FakeClock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.errors import QuotaExceeded, Unavailable
from agentcell.protocol.functions import Affinity, FunctionConfig
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.protocol.sessions import SessionCreate
from agentcell.server.clock import FakeClock
from agentcell.server.meta.sqlite import SqliteMetaStore
from agentcell.server.observability.registry import Registry
from agentcell.server.sandbox.fake import FakeDriver
from agentcell.server.scheduler.node_capacity import NodeCapacity, NodeFull
from agentcell.server.scheduler.sandbox_pool import QUIET_S, SandboxPool, default_spec
from agentcell.server.scheduler.sandboxes import SandboxService, new_sandbox_id
from agentcell.server.scheduler.scheduler import Scheduler, SchedulerLimits
from agentcell.server.scheduler.workspaces import WorkspaceKeeper
from agentcell.server.storage.objects import open_object_store
from agentcell.server.storage.snapshots import Snapshots

PIDS = 64


class Node:
    """One node's services on one driver and one capacity of `limit`, with a pool of `pool_size`."""

    def __init__(self, tmp_path: Path, limit: int, pool_size: int = 0, driver: FakeDriver | None = None):
        self.tmp_path = tmp_path
        self.driver = driver or FakeDriver(tmp_path / "sandboxes")
        self.clock = FakeClock()
        self.registry = Registry()
        self.capacity = NodeCapacity(limit, registry=self.registry)
        self.store = SqliteMetaStore(tmp_path / "meta.db")
        self.objects = open_object_store(f"file://{tmp_path / 'objects'}")
        snapshots = Snapshots(self.objects, self.clock)
        keeper = WorkspaceKeeper(self.driver, snapshots, self.store, self.clock, quota_bytes=lambda _: None)
        limits = SchedulerLimits(stop_grace_s=0.1, max_waiting=4, wait_timeout_s=5)
        self.scheduler = Scheduler(
            self.driver, self.store, self.clock, tmp_path / "code", limits, keeper, capacity=self.capacity
        )
        self.pool = SandboxPool(
            self.driver, self.clock, size=pool_size, spec=default_spec(PIDS), new_id=new_sandbox_id
        )
        self.sandboxes = SandboxService(
            self.driver, self.clock, pids_max=PIDS, stop_grace_s=0.1, pool=self.pool, capacity=self.capacity
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        (self.tmp_path / "sandboxes").mkdir(exist_ok=True)
        await self.store.open()
        # the scheduler first: it re-adopts its instances before the sandbox service reaps (app.py)
        scheduler_started, sandboxes_started = asyncio.Event(), asyncio.Event()
        self._tasks.append(asyncio.create_task(self.scheduler.run(3600, scheduler_started)))
        await scheduler_started.wait()
        self._tasks.append(asyncio.create_task(self.sandboxes.run(3600, sandboxes_started)))
        await sandboxes_started.wait()

    async def stop(self, graceful: bool = True) -> None:
        await self.pool.aclose()
        await self.sandboxes.aclose()
        if graceful:
            await self.scheduler.aclose()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.aclose()
        await self.objects.aclose()

    async def deploy(self, archive: Path, **config: object) -> None:
        config = {"cmd": "python3 app.py", **config}
        await self.scheduler.deploy("echo", FunctionConfig.model_validate(config), archive)

    async def fill_pool(self) -> None:
        self.clock.advance(QUIET_S)
        while await self.pool.refill_once(self.clock.now()):
            pass

    def metric(self, sample: str) -> float:
        lines = [line for line in self.registry.exposition().splitlines() if line.startswith(sample + " ")]
        return float(lines[0].split()[-1])


@contextlib.asynccontextmanager
async def running_node(tmp_path: Path, limit: int, pool_size: int = 0) -> AsyncIterator[Node]:
    node = Node(tmp_path, limit, pool_size)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()
        await node.driver.aclose()


async def test_sandboxes_and_instances_share_the_node(tmp_path: Path, archive: Path) -> None:
    """With room for 2, one sandbox and one session's instance fill the node: a second session
    is refused at once with a 503 naming the node's capacity, a sandbox create with the 429 it
    always got at the maximum, while the live session's requests go on; its end frees the room."""
    async with running_node(tmp_path, limit=2) as node:
        await node.deploy(archive)
        await node.sandboxes.create(SandboxCreate())
        session = await node.scheduler.create_session("echo", SessionCreate(key="first"))
        assert node.capacity.held == {"sandbox": 1, "instance": 1}

        with pytest.raises(NodeFull) as refused:
            await node.scheduler.create_session("echo", SessionCreate(key="second"))
        assert refused.value.code == "unavailable" and refused.value.retry_after_s == 1
        assert "at most 2 sandboxes and function instances together (AGENTCELL_MAX_SANDBOXES)" in str(
            refused.value
        )
        assert "1 sandbox(es) and 1 function instance(s)" in str(refused.value)
        with pytest.raises(Unavailable, match="AGENTCELL_MAX_SANDBOXES"):
            await node.scheduler.route("echo", "third")  # a request opening a session: the same
        with pytest.raises(QuotaExceeded, match="kill or pause a sandbox, or end a session") as full:
            await node.sandboxes.create(SandboxCreate())
        assert "AGENTCELL_MAX_SANDBOXES" in full.value.message
        assert node.scheduler.sessions("echo", None, {}) == [session]  # the refused ones left nothing

        lease = node.scheduler.route_warm("echo", "first")
        assert lease is not None and lease.instance.id == session.instance_id
        node.scheduler.release(lease)

        assert node.metric('agentcell_node_capacity_used{kind="instance"}') == 1
        assert node.metric("agentcell_node_capacity_limit") == 2
        await node.scheduler.delete_session(session.id)
        assert node.capacity.held == {"sandbox": 1, "instance": 0}
        await node.sandboxes.create(SandboxCreate())
        assert node.capacity.held == {"sandbox": 2, "instance": 0}


async def test_an_instance_that_fails_to_start_gives_its_slot_back(tmp_path: Path, archive: Path) -> None:
    async with running_node(tmp_path, limit=1) as node:
        await node.deploy(archive, cmd="exit 3")
        with pytest.raises(Unavailable, match="could not start an instance"):
            await node.scheduler.create_session("echo", SessionCreate())
        assert node.capacity.used == 0
        await node.sandboxes.create(SandboxCreate())


async def test_a_crashed_instance_gives_its_slot_back(tmp_path: Path, archive: Path) -> None:
    async with running_node(tmp_path, limit=1) as node:
        await node.deploy(archive)
        session = await node.scheduler.create_session("echo", SessionCreate())
        instance = node.scheduler.function("echo").instances[session.instance_id or ""]
        node.driver.crash(instance.id)
        await instance.stopped.wait()  # (set once its failure is handled and its sandbox gone)
        assert session.end_reason == "instance_failed" and node.capacity.used == 0
        await node.sandboxes.create(SandboxCreate())


async def test_idle_pooled_sandboxes_make_way_for_an_instance(tmp_path: Path, archive: Path) -> None:
    """The pool holds at most the room live sandboxes and instances leave: an instance about to
    start on a node whose room the pool fills stops an idle one first; its end gives it back."""
    async with running_node(tmp_path, limit=3, pool_size=3) as node:
        await node.deploy(archive)
        await node.fill_pool()
        assert node.pool.ready == 3
        session = await node.scheduler.create_session("echo", SessionCreate())
        assert node.pool.ready == 2 and node.pool.target(node.clock.now()) == 2
        await node.sandboxes.create(SandboxCreate())  # claims one: no spawn past the node's room
        assert node.pool.ready == 1 and node.capacity.room() == 1
        await node.scheduler.delete_session(session.id)
        assert node.pool.target(node.clock.now()) == 2
        await node.fill_pool()
        assert node.pool.ready == 2


async def test_the_warm_pool_backs_off_on_a_full_node(tmp_path: Path, archive: Path) -> None:
    """min_warm on a full node starts nothing and does not retry at every change (the start
    backoff); once there is room and the backoff passed, it fills."""
    async with running_node(tmp_path, limit=1) as node:
        sandbox = await node.sandboxes.create(SandboxCreate())
        await node.deploy(archive, min_warm=1)
        fn = node.scheduler.function("echo")
        assert node.scheduler.fill_once() == 0
        assert fn.warm_retry_at > node.clock.now() and not fn.instances
        await node.sandboxes.kill(sandbox.id)
        assert node.scheduler.fill_once() == 0  # backing off
        node.clock.advance(fn.warm_retry_at - node.clock.now())
        assert node.scheduler.fill_once() == 1
        assert node.capacity.held == {"sandbox": 0, "instance": 1}


async def test_a_stateless_request_waits_for_its_functions_own_instances(
    tmp_path: Path, archive: Path
) -> None:
    """affinity none: on a full node a request with no free instance waits for the function's
    busy one (as at max_instances); a function with no instance at all gets the 503 at once."""
    async with running_node(tmp_path, limit=1) as node:
        await node.deploy(archive, affinity=Affinity(kind="none"), concurrency_per_instance=1)
        first = await node.scheduler.route_stateless("echo")
        second = asyncio.create_task(node.scheduler.route_stateless("echo"))
        await asyncio.sleep(0.05)
        assert not second.done()
        node.scheduler.release(first)
        lease = await second
        assert lease.instance is first.instance
        node.scheduler.release(lease)

        await node.scheduler.delete_function("echo")
        await node.sandboxes.create(SandboxCreate())
        await node.deploy(archive, affinity=Affinity(kind="none"))
        with pytest.raises(NodeFull):
            await node.scheduler.route_stateless("echo")


async def test_readopted_instances_hold_their_slots(tmp_path: Path, archive: Path) -> None:
    """After a crash the instances a restarted server adopts count at once (never refused, even
    past the limit), before any sandbox is created."""
    first = Node(tmp_path, limit=2)
    await first.start()
    await first.deploy(archive)
    session = await first.scheduler.create_session("echo", SessionCreate(key="keep"))
    await first.stop(graceful=False)  # a crash: the instance keeps running
    first.driver.adoptable = {session.instance_id or ""}
    second = Node(tmp_path, limit=1, driver=first.driver)
    await second.start()
    try:
        assert second.capacity.held == {"sandbox": 0, "instance": 1}
        with pytest.raises(QuotaExceeded, match="AGENTCELL_MAX_SANDBOXES"):
            await second.sandboxes.create(SandboxCreate())
    finally:
        await second.stop()
        await first.driver.aclose()
