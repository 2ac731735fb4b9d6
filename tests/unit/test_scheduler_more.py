"""More scheduler logic on the FakeDriver and a FakeClock: `affinity: none` scaling (from zero, out
by concurrency, back to zero), one wait deadline, hooks with deadlines, cold starts that outlive
their client, and reaping that is concurrent and survives a failing item."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.errors import Conflict, Internal, Unavailable
from agentcell.protocol.functions import FunctionConfig, Hook
from agentcell.protocol.sessions import SessionCreate
from agentcell.server.sandbox.fake import FakeDriver
from tests.unit.test_scheduler import Harness, state

NONE = {"affinity": {"kind": "none"}}


class FlakyDriver(FakeDriver):
    """A FakeDriver whose `stop` fails once for the ids in `fail_stop`."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fail_stop: set[str] = set()

    async def stop(self, sandbox_id: str, grace_s: float = 2.0) -> None:
        if sandbox_id in self.fail_stop:
            self.fail_stop.discard(sandbox_id)
            raise Internal(f"cannot stop {sandbox_id} (test)")
        await super().stop(sandbox_id, grace_s)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path, FlakyDriver(tmp_path / "sandboxes"))
    await harness.start()
    yield harness
    await harness.stop()
    await harness.driver.aclose()


def live(h: Harness) -> list[str]:
    return [i.id for i in h.scheduler.function("echo").live_instances()]


def _config(cmd: str, **config: object) -> FunctionConfig:
    return FunctionConfig(cmd=cmd, **config)


async def reap(h: Harness, advance_s: float) -> list[tuple[str, str]]:
    h.clock.advance(advance_s)
    return await h.scheduler.reap_once(h.clock.now())


async def test_stateless_scales_from_zero_out_by_concurrency_and_back_to_zero(
    h: Harness, archive: Path
) -> None:
    """No instance until the first request; one more per concurrent request over
    concurrency_per_instance, never past max_instances; all stopped after idle_timeout_s."""
    await h.deploy(archive, **NONE, concurrency_per_instance=1, max_instances=2, idle_timeout_s=30)
    assert live(h) == []
    first = await h.scheduler.route("echo", None)
    second = await h.scheduler.route("echo", None)
    assert first.session is None and first.instance is not second.instance
    third = asyncio.create_task(h.scheduler.route("echo", None))
    await asyncio.sleep(0.2)
    assert not third.done() and len(live(h)) == 2  # at max_instances: it waits
    h.scheduler.release(first)
    lease = await asyncio.wait_for(third, 2)
    assert lease.instance is first.instance
    for done in (second, lease):
        h.scheduler.release(done)
    assert await reap(h, 29.9) == []
    reaped = await reap(h, 0.1)
    assert sorted(i for i, _ in reaped) == sorted([first.instance.id, second.instance.id])
    assert live(h) == [] and h.scheduler.function("echo").instances == {}
    h.scheduler.release(await h.scheduler.route("echo", None))  # and from zero again
    assert len(live(h)) == 1


async def test_a_stateless_request_with_room_is_leased_without_awaiting(h: Harness, archive: Path) -> None:
    """`route_free` (the gateway's task-free path) leases the least busy ready instance with room,
    as `route` would; it gives None (route then scales out or queues) when there is none, while
    other requests wait their turn, and for a function with sessions."""
    await h.deploy(archive, **NONE, concurrency_per_instance=2, max_instances=1)
    assert h.scheduler.route_free("echo") is None  # from zero: only `route` starts one
    first = await h.scheduler.route("echo", None)
    second = h.scheduler.route_free("echo")
    assert second is not None and second.instance is first.instance and second.session is None
    assert first.instance.in_flight == 2 and h.scheduler.route_free("echo") is None  # full
    waiting = asyncio.create_task(h.scheduler.route("echo", None))
    await asyncio.sleep(0.05)
    h.scheduler.release(first)
    assert h.scheduler.route_free("echo") is None  # the queued request's turn, not a newcomer's
    h.scheduler.release(await asyncio.wait_for(waiting, 2))
    h.scheduler.release(second)
    again = h.scheduler.route_free("echo")
    assert again is not None and again.instance is first.instance
    h.scheduler.release(again)
    assert first.instance.in_flight == 0
    await h.deploy(archive)  # sessions (header affinity) from now on
    assert h.scheduler.route_free("echo") is None


async def test_a_burst_starts_instances_in_parallel_but_never_too_many(h: Harness, archive: Path) -> None:
    """Four concurrent requests, one each per instance, max 3: exactly three instances start at
    once (not one after another, and not one per request); the fourth gets a freed one."""
    await h.deploy(archive, **NONE, concurrency_per_instance=1, max_instances=3)
    started = time.monotonic()
    tasks = [asyncio.create_task(h.scheduler.route("echo", None)) for _ in range(4)]
    done, waiting = await asyncio.wait(tasks, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    while len(done) < 3:
        more, waiting = await asyncio.wait(waiting, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        done |= more
    leases = [task.result() for task in done]
    assert len({lease.instance.id for lease in leases}) == 3 and len(h.driver.started) == 3
    assert time.monotonic() - started < 1.5  # started together, not one after another
    [fourth] = waiting
    h.scheduler.release(leases[0])
    last = await asyncio.wait_for(fourth, 2)
    assert last.instance is leases[0].instance and len(h.driver.started) == 3
    for lease in (*leases[1:], last):
        h.scheduler.release(lease)


async def test_a_stateless_instance_that_fails_to_start_fails_the_request_once(
    h: Harness, archive: Path
) -> None:
    """The request gets the boot failure as 503 instead of launching instances until it times out."""
    await h.scheduler.deploy("echo", _config("exit 3", **NONE), archive)
    with pytest.raises(Unavailable, match="exited with code 3"):
        await h.scheduler.route("echo", None)
    assert len(h.driver.started) == 1 and live(h) == []


async def test_a_cold_start_outlives_a_client_that_gave_up(h: Harness, archive: Path) -> None:
    """Cancelling the first request of a key (client disconnect, request timeout) mid cold start
    neither ends the session nor wastes the instance: the next request of the key gets both."""
    await h.scheduler.deploy("echo", _config("sleep 0.3; exec python3 app.py"), archive)
    first = asyncio.create_task(h.scheduler.route("echo", "slow-1"))
    await asyncio.sleep(0.1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    [session] = h.scheduler.sessions("echo", None, {})
    lease = await h.scheduler.route("echo", "slow-1")
    assert lease.session is session and session.state == "active"
    assert lease.instance.id == session.instance_id and len(h.driver.started) == 1
    h.scheduler.release(lease)
    assert state(session) == "idle" and session.in_flight == 0


async def test_the_wait_for_room_has_one_deadline_however_often_it_is_woken(
    h: Harness, archive: Path
) -> None:
    """Requests finishing on a full function wake the waiters; that must not restart their
    wait_timeout_s (2 s here), or a busy function would keep them waiting forever."""
    await h.deploy(archive, max_instances=1)
    await h.scheduler.create_session("echo", SessionCreate(key="only"))
    started = time.monotonic()
    waiter = asyncio.create_task(h.scheduler.create_session("echo", SessionCreate(key="second")))
    while not waiter.done() and time.monotonic() - started < 5:
        h.scheduler.release(await h.scheduler.route("echo", "only"))
        await asyncio.sleep(0.05)
    with pytest.raises(Unavailable, match="became free within 2 s"):
        await waiter
    assert 1.9 < time.monotonic() - started < 4.5  # restarted waits would end past the 5 s loop


async def test_a_session_deleted_while_waiting_for_room_takes_no_instance(h: Harness, archive: Path) -> None:
    """Its waiter is told it ended, and when room appears no instance is started (or held) for it."""
    await h.deploy(archive, max_instances=1)
    only = await h.scheduler.create_session("echo", SessionCreate(key="only"))
    waiter = asyncio.create_task(h.scheduler.create_session("echo", SessionCreate(key="waits")))
    await asyncio.sleep(0.05)
    [pending] = h.scheduler.sessions("echo", "pending", {})
    await h.scheduler.delete_session(pending.id)
    with pytest.raises(Unavailable, match="ended"):
        await waiter
    await h.scheduler.delete_session(only.id)
    await asyncio.sleep(0.2)
    assert live(h) == [] and len(h.driver.started) == 1


async def _cancelled(task: asyncio.Task[object]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)  # (the placement it woke leaves the queue)


async def test_a_request_that_gives_up_while_queued_leaves_no_session_behind(
    h: Harness, archive: Path
) -> None:
    """At max_instances, a request whose client left (the gateway cancels its routing) leaves the
    wait queue at once; when room appears no session is bound and no instance started for it."""
    await h.deploy(archive, max_instances=1)
    hold = await h.scheduler.create_session("echo", SessionCreate(key="hold"))
    fn = h.scheduler.function("echo")
    ghost = asyncio.create_task(h.scheduler.route("echo", "ghost"))
    await asyncio.sleep(0.05)
    assert fn.waiting == 1 and "ghost" in fn.sessions
    await _cancelled(ghost)
    assert fn.waiting == 0 and list(fn.sessions) == ["hold"]
    await h.scheduler.delete_session(hold.id)
    await asyncio.sleep(0.2)
    assert h.scheduler.sessions("echo", None, {}) == [] and live(h) == []
    assert len(h.driver.started) == 1
    h.scheduler.release(await h.scheduler.route("echo", "ghost"))  # the key is free


async def test_waiters_that_gave_up_do_not_keep_the_queue_full(h: Harness, archive: Path) -> None:
    """max_waiting (4 here) requests whose clients left: the next one waits instead of 429."""
    await h.deploy(archive, max_instances=1)
    hold = await h.scheduler.create_session("echo", SessionCreate(key="hold"))
    ghosts = [asyncio.create_task(h.scheduler.route("echo", f"ghost-{i}")) for i in range(4)]
    await asyncio.sleep(0.05)
    assert h.scheduler.function("echo").waiting == 4
    for ghost in ghosts:
        await _cancelled(ghost)
    real = asyncio.create_task(h.scheduler.route("echo", "real"))
    await asyncio.sleep(0.05)
    assert not real.done() and h.scheduler.function("echo").waiting == 1
    await h.scheduler.delete_session(hold.id)
    lease = await asyncio.wait_for(real, 2)
    assert lease.session is not None and lease.session.key == "real"
    h.scheduler.release(lease)
    assert [s.key for s in h.scheduler.sessions("echo", None, {})] == ["real"]


async def test_a_queued_session_stays_while_another_request_waits_for_it(h: Harness, archive: Path) -> None:
    """Two requests of one key wait for room; the one that gives up does not take the session
    from the one that stays."""
    await h.deploy(archive, max_instances=1)
    hold = await h.scheduler.create_session("echo", SessionCreate(key="hold"))
    first = asyncio.create_task(h.scheduler.route("echo", "k"))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(h.scheduler.route("echo", "k"))
    await asyncio.sleep(0.05)
    await _cancelled(first)
    await h.scheduler.delete_session(hold.id)
    lease = await asyncio.wait_for(second, 2)
    assert lease.session is not None and lease.session.key == "k"
    h.scheduler.release(lease)


async def test_initialize_failure_or_deadline_fails_the_session_and_leaves_no_instance(
    h: Harness, archive: Path
) -> None:
    for hook, needle in [(Hook(cmd="exit 4"), "code 4"), (Hook(cmd="sleep 30", timeout_s=0.3), "deadline")]:
        await h.scheduler.deploy("echo", _config("exec python3 app.py", initialize=hook), archive)
        started = time.monotonic()
        with pytest.raises(Unavailable, match=f"could not start an instance of echo: .*{needle}"):
            await h.scheduler.create_session("echo", SessionCreate())
        assert time.monotonic() - started < 3
        assert live(h) == [] and h.scheduler.sessions("echo", None, {}) == []


async def test_a_hanging_pre_stop_hook_is_killed_at_its_deadline(h: Harness, archive: Path) -> None:
    await h.scheduler.deploy(
        "echo", _config("exec python3 app.py", pre_stop=Hook(cmd="sleep 30", timeout_s=0.3)), archive
    )
    session = await h.scheduler.create_session("echo", SessionCreate())
    started = time.monotonic()
    await h.scheduler.delete_session(session.id)
    assert time.monotonic() - started < 2
    assert session.end_reason == "deleted" and live(h) == []


async def test_reaping_goes_on_past_an_item_that_fails(h: Harness, archive: Path) -> None:
    """One instance that cannot be stopped must not stop the reaper (nor kill its loop)."""
    await h.deploy(archive, session_ttl_s=60)
    a = await h.scheduler.create_session("echo", SessionCreate(key="a"))
    b = await h.scheduler.create_session("echo", SessionCreate(key="b"))
    driver = h.driver
    assert isinstance(driver, FlakyDriver)
    driver.fail_stop = {a.instance_id or ""}
    reaped = await reap(h, 60)
    assert {s for s, _ in reaped} == {a.id, b.id}
    assert a.state == b.state == "ended"
    assert b.instance_id not in h.scheduler.function("echo").instances


async def test_expired_sessions_are_reaped_concurrently(h: Harness, archive: Path) -> None:
    """Three sessions whose pre_stop hooks hang until their 1 s deadline: one pass takes about
    one deadline, not three."""
    hook = Hook(cmd="sleep 30", timeout_s=1.0)
    await h.scheduler.deploy("echo", _config("exec python3 app.py", session_ttl_s=60, pre_stop=hook), archive)
    sessions = [await h.scheduler.create_session("echo", SessionCreate()) for _ in range(3)]
    started = time.monotonic()
    reaped = await reap(h, 60)
    assert 1.0 <= time.monotonic() - started < 2.5  # one after another: 3 s
    assert sorted(reaped) == sorted((s.id, "ttl") for s in sessions) and live(h) == []


async def test_a_shared_instance_whose_sessions_all_ended_is_warm_again(h: Harness, archive: Path) -> None:
    """With sessions_per_instance > 1, an instance left with no session goes back to the warm
    list, so the next session takes it instead of starting another instance."""
    await h.deploy(archive, sessions_per_instance=4)
    first = await h.scheduler.create_session("echo", SessionCreate(key="one"))
    await h.scheduler.delete_session(first.id)
    fn = h.scheduler.function("echo")
    assert [i.id for i in fn.warm] == [first.instance_id]
    second = await h.scheduler.create_session("echo", SessionCreate(key="two"))
    assert second.instance_id == first.instance_id
    assert len(fn.live_instances()) == 1


async def test_a_key_whose_session_never_bound_stays_usable_without_reuse(h: Harness, archive: Path) -> None:
    """disable_session_id_reuse refuses keys of sessions that ran; a session that failed before it
    reached an instance (here: its initialize hook fails) does not burn its key."""
    failing = _config("exec python3 app.py", disable_session_id_reuse=True, initialize=Hook(cmd="exit 3"))
    await h.scheduler.deploy("echo", failing, archive)
    with pytest.raises(Unavailable):
        await h.scheduler.create_session("echo", SessionCreate(key="k"))
    working = _config("exec python3 app.py", disable_session_id_reuse=True)
    await h.scheduler.deploy("echo", working, archive)
    session = await h.scheduler.create_session("echo", SessionCreate(key="k"))
    await h.scheduler.delete_session(session.id)
    with pytest.raises(Conflict, match="does not reuse"):
        await h.scheduler.create_session("echo", SessionCreate(key="k"))
