"""Pause and resume (persist-and-stop) and metrics through the official E2B SDKs, sync and async,
against a real agentcell server: the files of /home/user come back under the same sandbox id,
memory and processes do not; paused sandboxes are listed, killed with their saved files, paused at
their timeout when asked, and survive a server restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from e2b import AsyncSandbox as BaseAsyncSandbox
from e2b import (
    NotFoundException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
)
from e2b import Sandbox as BaseSandbox
from e2b_code_interpreter import AsyncSandbox, Sandbox

from tests.conftest import ServerFactory, ServerProcess
from tests.integration.conftest import e2b_variables


@pytest.fixture(scope="module")
def e2b_env(shared_server: ServerProcess) -> Iterator[ServerProcess]:
    with e2b_variables(shared_server.url):
        yield shared_server


def _saved_files(server: ServerProcess, sandbox_id: str) -> Path:
    return server.state_dir / "objects" / "default" / "_sandboxes" / sandbox_id


def _ids(state: SandboxState, tag: str) -> list[str]:
    query = SandboxQuery(metadata={"case": tag}, state=[state])
    return [s.sandbox_id for s in BaseSandbox.list(query=query).next_items()]


def test_pause_and_connect_bring_the_files_back_under_the_same_id(e2b_env: ServerProcess) -> None:
    """pause() saves /home/user and stops the sandbox (listed as paused, not running, a second
    pause answers False); connect() resumes it with the same id and its files, commands run again,
    and the Python state and processes of before are gone (memory is not saved)."""
    tag = f"p{time.monotonic_ns()}"
    sbx = Sandbox.create(timeout=120, metadata={"case": tag}, envs={"FROM_CREATE": "kept"})
    try:
        sbx.files.write("notes/a.txt", "hello")
        sbx.files.write("/home/user/blob.bin", bytes(range(256)) * 40)
        sbx.commands.run("mkdir -p deep/er && echo x > deep/er/f && chmod 600 deep/er/f")
        sbx.run_code("x = 41")
        sbx.commands.run("sleep 300", background=True)
        assert sbx.pause() is True
        assert BaseSandbox.pause(sbx.sandbox_id) is False  # already paused
        assert _ids(SandboxState.PAUSED, tag) == [sbx.sandbox_id]
        assert _ids(SandboxState.RUNNING, tag) == []
        info = BaseSandbox.get_info(sbx.sandbox_id)
        assert (info.state, info.metadata) == (SandboxState.PAUSED, {"case": tag})
        assert info.template_id == "code-interpreter-v1"
        assert not sbx.is_running()
        with pytest.raises(SandboxNotRunningException):
            sbx.files.read("notes/a.txt")  # in-sandbox calls need a resume first
        assert _saved_files(e2b_env, sbx.sandbox_id).is_dir()

        resumed_from = datetime.now(UTC)
        again = Sandbox.connect(sbx.sandbox_id, timeout=60)
        resumed_by = datetime.now(UTC)
        assert again.sandbox_id == sbx.sandbox_id
        assert again.files.read("notes/a.txt") == "hello"
        assert again.files.read("blob.bin", format="bytes") == bytes(range(256)) * 40
        assert again.commands.run("stat -c %a deep/er/f; cat deep/er/f; echo $FROM_CREATE").stdout == (
            "600\nx\nkept\n"
        )
        assert again.commands.list() == []  # the sleep did not survive
        assert again.run_code("x").error is not None  # nor did the kernel's state
        assert again.run_code("x = 1; x + 1").text == "2"
        info = again.get_info()
        assert (info.state, info.template_id) == (SandboxState.RUNNING, "code-interpreter-v1")
        # the connect's timeout counts from the resume (started_at stays the create's time)
        assert (info.end_at - resumed_from).total_seconds() >= 59
        assert (info.end_at - resumed_by).total_seconds() <= 61
        assert not _saved_files(e2b_env, sbx.sandbox_id).exists()  # a running sandbox keeps no snapshot
        assert Sandbox.connect(sbx.sandbox_id).sandbox_id == sbx.sandbox_id  # running: plain connect
    finally:
        sbx.kill()


def test_kill_of_a_paused_sandbox_deletes_its_files(e2b_env: ServerProcess) -> None:
    sbx = BaseSandbox.create(timeout=60)
    sbx.files.write("f.txt", "data")
    assert sbx.pause() is True
    assert _saved_files(e2b_env, sbx.sandbox_id).is_dir()
    assert BaseSandbox.kill(sbx.sandbox_id) is True
    assert not _saved_files(e2b_env, sbx.sandbox_id).exists()
    assert BaseSandbox.kill(sbx.sandbox_id) is False
    with pytest.raises(SandboxNotFoundException):
        BaseSandbox.connect(sbx.sandbox_id)


def test_pause_of_an_unknown_sandbox_is_not_found(e2b_env: ServerProcess) -> None:
    with pytest.raises(NotFoundException):
        BaseSandbox.pause("sbx_0000000000000000")
    with pytest.raises(SandboxNotFoundException):
        BaseSandbox.get_metrics("sbx_0000000000000000")


def test_paused_sandbox_refuses_timeout_changes_and_metrics(e2b_env: ServerProcess) -> None:
    """A paused sandbox has no timeout to move and no usage to sample: 409, the sandbox stays
    paused."""
    sbx = BaseSandbox.create(timeout=60)
    try:
        sbx.pause()
        for call in (lambda: sbx.set_timeout(100), sbx.get_metrics):
            with pytest.raises(Exception, match="is paused; resume it first"):
                call()
        assert sbx.get_info().state == SandboxState.PAUSED
    finally:
        sbx.kill()


def test_on_timeout_pause_pauses_instead_of_killing(e2b_env: ServerProcess) -> None:
    sbx = BaseSandbox.create(timeout=1, lifecycle={"on_timeout": "pause"})
    try:
        assert sbx.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": False}
        sbx.files.write("kept.txt", "through the timeout")
        deadline = time.monotonic() + 5
        while sbx.get_info().state != SandboxState.PAUSED:
            assert time.monotonic() < deadline, "not paused 5 s after its 1 s timeout"
            time.sleep(0.1)
        again = BaseSandbox.connect(sbx.sandbox_id, timeout=60)
        assert again.files.read("kept.txt") == "through the timeout"
    finally:
        sbx.kill()


def test_metrics_after_burning_cpu(e2b_env: ServerProcess) -> None:
    """get_metrics: one sample per call, kept as a series; CPU percent over the last window, memory
    and disk of the sandbox's cgroup and workspace filesystem."""
    sbx = BaseSandbox.create(timeout=60)
    try:
        first = sbx.get_metrics()
        sbx.commands.run("timeout 0.7 sh -c 'while :; do :; done' || true")
        sbx.files.write("big.bin", b"\0" * (4 << 20))
        metrics = sbx.get_metrics()
        assert len(first) == 1 and len(metrics) == 2
        last = metrics[-1]
        assert last.cpu_count == 1
        assert 10 < last.cpu_used_pct <= 110
        assert 0 < last.mem_used < last.mem_total == 512 << 20
        assert 4 << 20 <= last.disk_used < last.disk_total == 512 << 20  # the 1 GiB disk, capped at memory
        assert abs(last.timestamp.timestamp() - time.time()) < 5
        since = sbx.get_metrics(start=last.timestamp)  # whole seconds, as the SDK sends them
        assert len(since) in (2, 3) and since[-2:][0].timestamp <= last.timestamp <= since[-1].timestamp
        assert all(m.timestamp.timestamp() >= int(last.timestamp.timestamp()) for m in since)
        assert sbx.get_metrics(end=datetime(2020, 1, 1, tzinfo=UTC)) == []
    finally:
        sbx.kill()


async def test_async_pause_and_resume(e2b_env: ServerProcess) -> None:
    sbx = await AsyncSandbox.create(timeout=60)
    try:
        await sbx.files.write("a/b.txt", "async")
        assert await sbx.pause() is True
        assert await BaseAsyncSandbox.pause(sbx.sandbox_id) is False
        assert (await sbx.get_info()).state == SandboxState.PAUSED
        resumed = await asyncio.gather(*(AsyncSandbox.connect(sbx.sandbox_id) for _ in range(2)))
        assert {r.sandbox_id for r in resumed} == {sbx.sandbox_id}
        assert await resumed[0].files.read("a/b.txt") == "async"
        assert (await resumed[1].commands.run("cat a/b.txt")).stdout == "async"
        assert len(await sbx.get_metrics()) == 1
    finally:
        await sbx.kill()
    with pytest.raises(SandboxNotFoundException):
        await BaseAsyncSandbox.get_info(sbx.sandbox_id)


def test_paused_sandbox_survives_a_server_restart(server_factory: ServerFactory) -> None:
    first = server_factory()
    with e2b_variables(first.url):
        sbx = BaseSandbox.create(timeout=60, metadata={"case": "restart"})
        sbx.files.write("survivor.txt", "still here")
        sbx.pause()
    assert first.stop() == 0
    second = server_factory(first.state_dir)
    with e2b_variables(second.url):
        listed = BaseSandbox.list(query=SandboxQuery(metadata={"case": "restart"})).next_items()
        assert [(s.sandbox_id, s.state) for s in listed] == [(sbx.sandbox_id, SandboxState.PAUSED)]
        again = BaseSandbox.connect(sbx.sandbox_id)
        assert again.files.read("survivor.txt") == "still here"
        again.kill()
