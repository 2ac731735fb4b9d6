"""A request that arrives at the exact moment its session idles out (the FakeDriver, a real SQLite
store, a FakeClock): the reaper decides on a snapshot of the sessions, and the request's warm-path
lease may be taken in the same turn of the event loop, before the reaper's end of the session
starts. The session must then stay (it is no longer idle), not be ended — and its exclusive
instance frozen and destroyed — under the request."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agentcell.protocol.sessions import SessionCreate
from tests.unit.test_scheduler import Harness, harness, state

__all__ = ["harness"]  # (the fixture, imported for pytest)


async def test_a_request_leased_as_the_reaper_decides_keeps_its_session(
    harness: Harness, archive: Path
) -> None:
    await harness.deploy(archive, idle_timeout_s=10)
    scheduler = harness.scheduler
    session = await scheduler.create_session("echo", SessionCreate(key="edge"))
    harness.clock.advance(10)
    reaping = asyncio.create_task(scheduler.reap_once(harness.clock.now()))
    await asyncio.sleep(0)  # the reaper has chosen its sessions; its ends have not started
    lease = scheduler.route_warm("echo", "edge")
    assert lease is not None and lease.session is session
    assert await reaping == []
    assert state(session) == "active" and lease.instance.is_ready
    scheduler.release(lease)
    harness.clock.advance(10)
    assert await scheduler.reap_once(harness.clock.now()) == [(session.id, "idle")]  # later, it does


async def test_ttl_still_ends_a_session_with_a_request_in_flight(harness: Harness, archive: Path) -> None:
    """The re-check spares only an idle-out: a session's TTL ends it whatever it is doing."""
    await harness.deploy(archive, idle_timeout_s=10, session_ttl_s=10)
    scheduler = harness.scheduler
    session = await scheduler.create_session("echo", SessionCreate(key="ttl"))
    harness.clock.advance(10)
    reaping = asyncio.create_task(scheduler.reap_once(harness.clock.now()))
    await asyncio.sleep(0)
    lease = scheduler.route_warm("echo", "ttl")
    assert lease is not None
    assert await reaping == [(session.id, "ttl")]
    scheduler.release(lease)


async def test_a_request_routed_to_an_instance_the_reaper_chose_keeps_it(
    harness: Harness, archive: Path
) -> None:
    """`affinity: none`: the reaper picks an idle instance; a request takes it in the same turn of
    the loop. The instance used to be stopped under the request (a 502 for the client)."""
    await harness.deploy(archive, affinity={"kind": "none"}, idle_timeout_s=10)
    scheduler = harness.scheduler
    scheduler.release(await scheduler.route_stateless("echo"))
    harness.clock.advance(10)
    reaping = asyncio.create_task(scheduler.reap_once(harness.clock.now()))
    await asyncio.sleep(0)  # the reaper has chosen the idle instance; its stop has not started
    lease = await scheduler.route_stateless("echo")
    assert await reaping == []
    assert lease.instance.is_ready and lease.instance.id in scheduler.function("echo").instances
    scheduler.release(lease)
    harness.clock.advance(10)
    assert await scheduler.reap_once(harness.clock.now()) == [(lease.instance.id, "idle")]
