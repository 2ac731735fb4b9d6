"""MCP sessions in the scheduler (FakeDriver, FakeClock): opened unnamed, named by the instance,
given back untouched when never named, ended on request; unknown ids are not found."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.errors import NotFound
from agentcell.protocol.functions import FunctionConfig
from tests.unit.test_scheduler import Harness

MCP = {"affinity": {"kind": "mcp"}, "max_instances": 4}


@pytest.fixture
async def h(tmp_path: Path, archive: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    await harness.start()
    await harness.scheduler.deploy("echo", FunctionConfig(cmd="python3 app.py", **MCP), archive)
    yield harness
    await harness.stop()
    await harness.driver.aclose()


async def test_a_named_session_is_found_by_the_name_the_instance_gave(h: Harness) -> None:
    lease = await h.scheduler.route_new_mcp_session("echo")
    h.scheduler.name_mcp_session(lease, "abc123")
    h.scheduler.release(lease)
    h.scheduler.release_unnamed(lease)  # named: nothing to give back
    again = await h.scheduler.route("echo", "abc123")
    assert again.instance is lease.instance and again.session is lease.session
    h.scheduler.release(again)
    assert [s.key for s in h.scheduler.sessions("echo", None, {})] == ["abc123"]


async def test_an_unknown_session_id_is_not_found_rather_than_created(h: Harness) -> None:
    with pytest.raises(NotFound, match="initialize"):
        await h.scheduler.route("echo", "never-issued")
    assert h.scheduler.sessions("echo", None, {}) == []


async def test_an_unnamed_session_gives_its_instance_back_untouched(h: Harness) -> None:
    lease = await h.scheduler.route_new_mcp_session("echo")
    h.scheduler.release(lease)
    h.scheduler.release_unnamed(lease)
    assert h.scheduler.sessions("echo", None, {}) == []
    fn = h.scheduler.function("echo")
    assert lease.instance in fn.warm and lease.instance.is_ready  # not destroyed: reused next
    second = await h.scheduler.route_new_mcp_session("echo")
    assert second.instance is lease.instance
    h.scheduler.release(second)


async def test_names_that_are_taken_or_malformed_are_not_bound(h: Harness) -> None:
    first = await h.scheduler.route_new_mcp_session("echo")
    h.scheduler.name_mcp_session(first, "same")
    second = await h.scheduler.route_new_mcp_session("echo")
    h.scheduler.name_mcp_session(second, "same")
    h.scheduler.name_mcp_session(second, "bad id with spaces")
    assert second.session is not None and second.session.unnamed
    for lease in (first, second):
        h.scheduler.release(lease)


async def test_ending_an_mcp_session_frees_its_exclusive_instance(h: Harness) -> None:
    lease = await h.scheduler.route_new_mcp_session("echo")
    h.scheduler.name_mcp_session(lease, "bye")
    h.scheduler.release(lease)
    h.scheduler.end_mcp_session(lease)
    for _ in range(100):
        if not h.scheduler.function("echo").instances:
            break
        await asyncio.sleep(0.01)
    assert h.scheduler.function("echo").instances == {}  # exclusive: destroyed with its session
    with pytest.raises(NotFound):
        await h.scheduler.route("echo", "bye")


async def test_an_instance_started_for_a_stateless_request_takes_a_session_next(
    h: Harness, archive: Path
) -> None:
    await h.scheduler.deploy(
        "solo", FunctionConfig(cmd="python3 app.py", **{**MCP, "max_instances": 1}), archive
    )
    stateless = await h.scheduler.route_stateless("solo")
    h.scheduler.release(stateless)
    h.scheduler.release_unnamed(stateless)  # as the gateway does after a request of no session
    session = await asyncio.wait_for(h.scheduler.route_new_mcp_session("solo"), 5)
    assert session.instance is stateless.instance  # not a wait for an instance that never frees
    h.scheduler.release(session)
