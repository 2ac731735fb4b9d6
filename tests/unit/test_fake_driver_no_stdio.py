"""The fake driver's processes started without stdio (ExecSpec.stdio=False): /dev/null in and out,
the same SandboxProcess contract as the Linux driver's (tests/system/test_driver_exec_no_stdio.py)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.errors import InvalidArgument
from agentcell.server.sandbox.driver import ExecSpec, SandboxSpec
from agentcell.server.sandbox.fake import FakeDriver


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[FakeDriver]:
    fake = FakeDriver(tmp_path)
    await fake.start(SandboxSpec(sandbox_id="sbx"))
    try:
        yield fake
    finally:
        await fake.aclose()


def no_stdio(script: str) -> ExecSpec:
    return ExecSpec(argv=["/bin/sh", "-c", script], stdio=False)


async def test_output_goes_nowhere_and_the_readers_are_at_end_of_file(driver: FakeDriver) -> None:
    process = await driver.exec("sbx", no_stdio("echo out; echo err >&2; exit 3"))
    assert await process.stdout.read() == b"" and await process.stderr.read() == b""
    assert (await process.wait()).code == 3


async def test_stdin_is_at_end_of_file_and_cannot_be_written(driver: FakeDriver) -> None:
    process = await driver.exec("sbx", no_stdio("exec cat"))
    await process.close_stdin()  # nothing to close: a no-op, as often as it is called
    await process.close_stdin()
    with pytest.raises(InvalidArgument, match="without stdin"):
        await process.write_stdin(b"lost")
    assert (await asyncio.wait_for(process.wait(), 30)).code == 0  # cat read /dev/null's end at once


async def test_signals_and_stop_still_end_it(driver: FakeDriver) -> None:
    process = await driver.exec("sbx", no_stdio("exec sleep 600"))
    process.send_signal(signal.SIGTERM)
    status = await asyncio.wait_for(process.wait(), 30)
    assert (status.code, status.signal) == (128 + signal.SIGTERM, signal.SIGTERM)
    process.send_signal(signal.SIGKILL)  # once it has exited: a no-op
    survivor = await driver.exec("sbx", no_stdio("exec sleep 600"))
    await driver.stop("sbx")
    assert (await survivor.wait()).signal == signal.SIGKILL
