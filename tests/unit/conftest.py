"""Unit-test fixtures and helpers shared by the scheduler tests."""

from __future__ import annotations

import asyncio
import contextlib
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentcell.server.scheduler.sandboxes import SandboxService

ECHO = Path(__file__).resolve().parent.parent / "fixtures" / "echo_fn"


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "code.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(ECHO / "app.py", arcname="app.py")
    return path


@contextlib.asynccontextmanager
async def running(service: SandboxService) -> AsyncIterator[SandboxService]:
    """`service` with its run loop started (death watchers need it) while inside; after, its
    sandboxes are closed, then the loop is stopped. The loop's own ticks are an hour apart: a test
    drives expiry and metering itself (`expire_once`, `meter_once`) with its fake clock."""
    started = asyncio.Event()
    task = asyncio.create_task(service.run(3600, started))
    try:
        await started.wait()
        yield service
    finally:
        try:
            await service.aclose()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
