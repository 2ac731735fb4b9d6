"""Kernels on a real LinuxDriver: confined sandbox processes that die with their sandbox, reached
through socket files the sandbox cannot redirect to the host."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zmq

from agentcell.errors import Unavailable
from agentcell.protocol.code import CodeContextCreate, CodeEndEvent, CodeOutputEvent, CodeResultEvent
from agentcell.server.clock import SystemClock
from agentcell.server.interpreter.context import InterpreterLimits
from agentcell.server.interpreter.contexts import CodeContexts, Interpreter
from agentcell.server.interpreter.execution import CodeEventModel
from agentcell.server.interpreter.jupyter import open_socket_file
from agentcell.server.sandbox.driver import ExecSpec
from agentcell.server.sandbox.linux.driver import LinuxDriver
from tests.system.conftest import is_running, run


@pytest.fixture
async def interpreter(linux_driver: LinuxDriver) -> AsyncIterator[Interpreter]:
    interpreter = Interpreter(linux_driver, SystemClock(), InterpreterLimits(interrupt_grace_s=0.5))
    try:
        yield interpreter
    finally:
        await interpreter.aclose()


async def events(contexts: CodeContexts, code: str, language: str = "python") -> list[CodeEventModel]:
    context = await contexts.default(language)
    return [event async for event in context.run(code, {}, 30)]


def main_text(found: list[CodeEventModel]) -> str | None:
    return next((e.data.get("text/plain") for e in found if isinstance(e, CodeResultEvent)), None)


def own_fds() -> dict[str, str]:
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
    return found


async def test_kernels_run_as_the_sandbox_user_and_die_with_their_sandbox(
    linux_driver: LinuxDriver, sandbox: str, interpreter: Interpreter
) -> None:
    # The node-wide ZMQ context (its I/O and reaper threads) lives until the server stops.
    interpreter.zmq_context().socket(zmq.DEALER).close(linger=0)
    await asyncio.sleep(0.2)
    fds_before = own_fds()
    contexts = interpreter.contexts(sandbox, {})
    who = await events(contexts, "import os; (os.getuid(), os.getpid() < 1000, os.path.exists('/work'))")
    assert main_text(who) == "(1000, True, False)"
    assert main_text(await events(contexts, "1 + 1", "javascript")) == "2"
    assert isinstance((await events(contexts, "echo hi", "bash"))[-1], CodeEndEvent)
    host_pids = [c.kernel_host_pid for c in contexts.all()]
    assert len(host_pids) == 3 and all(pid and is_running(pid) for pid in host_pids)

    await linux_driver.stop(sandbox, grace_s=0.5)
    assert not any(pid and is_running(pid) for pid in host_pids)
    await interpreter.discard(sandbox)
    for _ in range(40):  # ZMQ's reaper thread closes a closed socket's mailbox a moment later
        leaked = {fd: link for fd, link in own_fds().items() if fds_before.get(fd) != link}
        if not leaked:
            break
        await asyncio.sleep(0.05)
    assert not leaked, f"descriptors left open after the sandbox ended: {leaked}"


async def test_a_socket_path_swapped_for_a_symlink_is_refused(
    linux_driver: LinuxDriver, sandbox: str, tmp_path: Path
) -> None:
    """Sandbox code cannot point the server's kernel connection at a host socket."""
    host_socket = tmp_path / "host.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(host_socket))
    script = (
        'set -e; mkdir -p /tmp/k; ln -s "$1" /tmp/k/evil-1; ln -s /tmp/k /tmp/linkdir; touch /tmp/k/file-1;'
        "python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' /tmp/k/good-1"
    )
    made = await run(linux_driver, sandbox, ["/bin/bash", "-c", script, "setup", str(host_socket)])
    assert made.code == 0, made.stderr
    probe = await linux_driver.exec(sandbox, ExecSpec(argv=["/bin/sleep", "30"]))
    root = os.open(f"/proc/{probe.host_pid}/root", os.O_PATH | os.O_DIRECTORY)
    try:
        good = open_socket_file(root, "/tmp/k/good-1")
        os.close(good)
        for path in ("/tmp/k/evil-1", "/tmp/linkdir/good-1", "/tmp/k/file-1", "/tmp/k/missing-1"):
            with pytest.raises(Unavailable):
                open_socket_file(root, path)
    finally:
        os.close(root)
        probe.send_signal(9)
        await probe.wait()
        listener.close()


async def test_context_cwd_and_removal(
    linux_driver: LinuxDriver, sandbox: str, interpreter: Interpreter
) -> None:
    """A context runs in its cwd; removing it leaves no socket file in the sandbox's /tmp."""
    contexts = interpreter.contexts(sandbox, {})
    request = CodeContextCreate.model_validate({"cwd": "/tmp"})
    context = await contexts.create(request)
    found = [event async for event in context.run("import os; os.getcwd()", {}, 30)]
    assert main_text(found) == "'/tmp'"
    await contexts.remove(context.id)
    listed = await run(linux_driver, sandbox, ["/bin/ls", "-A", "/tmp/.agentcell-kernels"])
    assert (listed.code, listed.stdout) == (0, ""), "the kernel's socket files were left behind"


async def test_output_larger_than_one_kernel_message_is_cut_not_lost(
    linux_driver: LinuxDriver, sandbox: str
) -> None:
    """Stream text too large for one kernel message comes in chunks, so its head is kept; a result
    bundle too large for one is dropped whole and counted. Neither costs the kernel its connection:
    the next run's output arrives (one oversized message used to cut it for good)."""
    limits = InterpreterLimits(max_output_bytes=3 << 20, max_message_bytes=1 << 20)
    interpreter = Interpreter(linux_driver, SystemClock(), limits)
    try:
        contexts = interpreter.contexts(sandbox, {})
        printed = await events(contexts, "print('é' * 2_000_000)")
        text = "".join(e.text for e in printed if isinstance(e, CodeOutputEvent))
        marker = "\n[agentcell: output truncated after 3145728 bytes; the rest is dropped]\n"
        assert text == "é" * (3 << 19) + marker
        end = printed[-1]
        assert isinstance(end, CodeEndEvent) and end.truncated_bytes == 4_000_001 - (3 << 20)
        shown = await events(contexts, "display({'image/png': 'A' * 2_000_000}, raw=True); 6 * 7")
        assert [e.text for e in shown if isinstance(e, CodeOutputEvent)] == [marker]
        end = shown[-1]
        assert isinstance(end, CodeEndEvent) and end.truncated_bytes > 2_000_000
        assert main_text(await events(contexts, "'still connected'")) == "'still connected'"
    finally:
        await interpreter.aclose()
