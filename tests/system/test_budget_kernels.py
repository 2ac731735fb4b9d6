"""Code-interpreter kernels and the server-wide command budget, on real sandboxes. A kernel holds
the server's file descriptors as a command does (its pipes, the worker's control pipe, a pidfd;
a Python kernel also its root and socket-file fds and two ZMQ sockets: 11 fds, 3 slots), so each
kernel process holds slots of the budget every sandbox's commands share (AGENTCELL_MAX_COMMANDS)
from before it starts until it is closed: a kernel start past it is refused with the 503
`unavailable` envelope, kernels already running keep working, and a deleted context or a killed
sandbox gives its slots back (the budget's count returns to 0)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import zmq

from agentcell.errors import Unavailable
from agentcell.protocol.code import CodeContextCreate, CodeEndEvent
from agentcell.server.clock import SystemClock
from agentcell.server.interpreter.context import CodeContext, InterpreterLimits
from agentcell.server.interpreter.contexts import Interpreter
from agentcell.server.interpreter.jupyter import KERNEL_SLOTS
from agentcell.server.interpreter.runner import RUNNER_SLOTS
from agentcell.server.sandbox.linux.driver import LinuxDriver
from agentcell.server.scheduler.command_budget import FDS_PER_COMMAND, CommandBudget
from tests.conftest import AUTH, ServerFactory

pytestmark = pytest.mark.system
SLEEPER = {"argv": ["sleep", "600"], "background": True}


@pytest.fixture
async def budget_and_interpreter(
    linux_driver: LinuxDriver,
) -> AsyncIterator[tuple[CommandBudget, Interpreter]]:
    budget = CommandBudget(KERNEL_SLOTS + RUNNER_SLOTS)
    interpreter = Interpreter(linux_driver, SystemClock(), InterpreterLimits(interrupt_grace_s=0.5), budget)
    try:
        yield budget, interpreter
    finally:
        await interpreter.aclose()
    assert budget.running == 0


async def ends_ok(context: CodeContext, code: str) -> bool:
    found = [event async for event in context.run(code, {}, 30)]
    end = found[-1]
    return isinstance(end, CodeEndEvent) and end.status == "ok"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settled(count: int) -> None:
    """The fd count is back to `count` within a second (a closed pipe's transport lets go of its
    fd on a later turn of the loop)."""
    for _ in range(100):
        if open_fds() == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{open_fds() - count} fds still open: {sorted(os.listdir('/proc/self/fd'))}")


async def test_kernels_take_slots_refuse_past_the_budget_and_give_them_back(
    linux_driver: LinuxDriver, sandbox: str, budget_and_interpreter: tuple[CommandBudget, Interpreter]
) -> None:
    budget, interpreter = budget_and_interpreter
    contexts = interpreter.contexts(sandbox, {})
    python = await contexts.create(CodeContextCreate(language="python"))
    bash = await contexts.create(CodeContextCreate(language="bash"))
    assert budget.running == 0  # a context costs nothing until its kernel starts
    assert await ends_ok(python, "x = 41")
    assert await ends_ok(bash, "y=1")
    assert budget.running == budget.limit == 4

    third = await contexts.create(CodeContextCreate(language="javascript"))
    with pytest.raises(Unavailable, match="limit of 4 commands at once") as refused:
        await third.ensure_started()
    assert refused.value.retry_after_s == 1
    assert budget.running == 4
    assert await ends_ok(python, "assert x + 1 == 42")  # the running kernels are untouched
    await python.interrupt()  # a control command (kill) runs at the limit too
    await bash.restart()  # its slot given back, then taken again by the new kernel
    assert await ends_ok(bash, "true") and budget.running == 4

    await contexts.remove(python.id)
    assert budget.running == RUNNER_SLOTS
    assert await ends_ok(third, "1 + 1")
    assert budget.running == 2 * RUNNER_SLOTS
    await interpreter.discard(sandbox)
    assert budget.running == 0


@pytest.mark.usefixtures("steady_fds")
async def test_a_kernel_holds_no_more_fds_than_its_slots(
    linux_driver: LinuxDriver, sandbox: str, budget_and_interpreter: tuple[CommandBudget, Interpreter]
) -> None:
    """The slots a kernel takes cover the fds it holds in the server (measured here); all of
    them are closed when it is."""
    budget, interpreter = budget_and_interpreter
    contexts = interpreter.contexts(sandbox, {})
    interpreter.zmq_context().socket(zmq.DEALER).close(linger=0)  # the node-wide ZMQ context's
    await asyncio.sleep(0.2)  # own fds (its I/O and reaper threads) are no kernel's
    for language, slots in (("python", KERNEL_SLOTS), ("bash", RUNNER_SLOTS), ("javascript", RUNNER_SLOTS)):
        before = open_fds()
        context = await contexts.create(CodeContextCreate(language=language))
        assert await ends_ok(context, "true" if language == "bash" else "1")
        held = open_fds() - before
        assert (slots - 1) * FDS_PER_COMMAND < held <= slots * FDS_PER_COMMAND, f"{language}: {held} fds"
        await contexts.remove(context.id)
        await settled(before)
    assert budget.running == 0


def run_code(api: httpx.Client, base: str, body: dict[str, object]) -> httpx.Response:
    return api.post(f"{base}/code", json={"timeout_s": 30, **body})


def end_status(reply: httpx.Response) -> str:
    assert reply.status_code == 200, reply.text
    return str(httpx.Response(200, content=reply.text.splitlines()[-1]).json()["status"])


def new_sandbox(api: httpx.Client) -> str:
    created = api.post("/v1/sandboxes", json={"timeout_s": 300})
    assert created.status_code == 201, created.text
    return f"/v1/sandboxes/{created.json()['id']}"


def new_context(api: httpx.Client, base: str, language: str) -> str:
    created = api.post(f"{base}/code/contexts", json={"language": language})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def assert_budget_is_free(api: httpx.Client, limit: int) -> None:
    """The budget's count is back to 0: `limit` commands start (in a new sandbox), one more is
    refused; then they are killed with their sandbox."""
    base = new_sandbox(api)
    deadline = time.monotonic() + 10
    while (first := api.post(f"{base}/commands", json=SLEEPER)).status_code == 503:
        assert time.monotonic() < deadline, first.text  # a killed sandbox's kernels are being reaped
        time.sleep(0.05)
    started = [first] + [api.post(f"{base}/commands", json=SLEEPER) for _ in range(limit - 1)]
    assert [r.status_code for r in started] == [201] * limit, started[-1].text
    assert api.post(f"{base}/commands", json=SLEEPER).status_code == 503
    assert api.delete(base).status_code == 204


def test_over_rest_a_new_context_is_a_503_and_its_slots_come_back(server_factory: ServerFactory) -> None:
    """AGENTCELL_MAX_COMMANDS=5: a Python kernel (3 slots), a bash one (1) and a background
    command fill the server. A new context's first run is the 503 `unavailable` envelope
    (Retry-After: 1) naming the limit, in that sandbox and another; the running kernels keep their
    state and answer. Deleting a context frees its slot for the new one; killing the sandboxes
    frees all, the count back to 0."""
    limit = 5
    server = server_factory(env={"AGENTCELL_SANDBOX_POOL": "0", "AGENTCELL_MAX_COMMANDS": str(limit)})
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        busy, other = new_sandbox(api), new_sandbox(api)
        assert end_status(run_code(api, busy, {"code": "x = 41"})) == "ok"  # the default python kernel
        shell = new_context(api, busy, "bash")
        assert end_status(run_code(api, busy, {"context_id": shell, "code": "cd /tmp"})) == "ok"
        assert api.post(f"{other}/commands", json=SLEEPER).status_code == 201

        waiting = new_context(api, busy, "bash")
        for refused in (
            run_code(api, busy, {"context_id": waiting, "code": "true"}),
            run_code(api, other, {"code": "1"}),
        ):
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            error = refused.json()
            assert error["code"] == "unavailable" and "request_id" in error
            assert f"limit of {limit} commands at once" in error["message"]
        prestarted = api.post("/v1/sandboxes", json={"timeout_s": 300, "code_kernel": True})
        assert prestarted.status_code == 503 and prestarted.json()["code"] == "unavailable", prestarted.text
        assert len(api.get("/v1/sandboxes").json()["sandboxes"]) == 2  # it was not left running
        assert end_status(run_code(api, busy, {"code": "assert x + 1 == 42"})) == "ok"
        assert end_status(run_code(api, busy, {"context_id": shell, "code": '[ "$PWD" = /tmp ]'})) == "ok"

        assert api.delete(f"{busy}/code/contexts/{shell}").status_code == 204
        assert end_status(run_code(api, busy, {"context_id": waiting, "code": "true"})) == "ok"
        assert api.post(f"{other}/commands", json=SLEEPER).status_code == 503

        assert api.delete(busy).status_code == 204
        assert api.delete(other).status_code == 204
        assert_budget_is_free(api, limit)


def test_kernel_start_refusals_leave_no_descriptor_behind(server_factory: ServerFactory) -> None:
    """Kernel starts refused past the budget open nothing: the server's fd count stays put."""
    server = server_factory(env={"AGENTCELL_SANDBOX_POOL": "0", "AGENTCELL_MAX_COMMANDS": "3"})
    fds = Path(f"/proc/{server.proc.pid}/fd")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as api:
        base = new_sandbox(api)
        assert end_status(run_code(api, base, {"code": "1"})) == "ok"
        context = new_context(api, base, "bash")
        before = len(list(fds.iterdir()))
        for _ in range(20):
            assert run_code(api, base, {"context_id": context, "code": "true"}).status_code == 503
        assert len(list(fds.iterdir())) <= before + 1  # (a keep-alive connection may come and go)
        assert api.delete(base).status_code == 204
