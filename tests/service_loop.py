"""A SandboxService with its run loop, for the unit and integration tests that drive one in-process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from agentcell.server.scheduler.sandboxes import SandboxService


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
