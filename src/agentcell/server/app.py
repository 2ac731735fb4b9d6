"""create_app: the one wiring point. Builds the concrete driver, store, services and routes from
Settings; the lifespan starts and stops their background work in a fixed order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import FastAPI

from agentcell import __version__
from agentcell.server.api import commands, files, functions, sandboxes, sessions
from agentcell.server.api.errors import RequestIdMiddleware, install_error_handlers
from agentcell.server.api.limits import BodyLimitMiddleware
from agentcell.server.clock import Clock, SystemClock
from agentcell.server.meta.sqlite import SqliteMetaStore
from agentcell.server.meta.store import MetaStore
from agentcell.server.sandbox.driver import SandboxDriver
from agentcell.server.scheduler.sandboxes import SandboxService
from agentcell.server.scheduler.scheduler import Scheduler, SchedulerLimits
from agentcell.server.settings import Settings

log = logging.getLogger(__name__)


def build_driver(settings: Settings) -> SandboxDriver:
    if settings.driver == "fake":
        from agentcell.server.sandbox.fake import FakeDriver

        return FakeDriver()
    from agentcell.server.sandbox.linux.driver import LinuxDriver, become_subreaper

    become_subreaper()
    return LinuxDriver(settings.state_dir)


async def _start(work: Coroutine[Any, Any, None], name: str, started: asyncio.Event) -> asyncio.Task[None]:
    """Run `work` as a task and return once it set `started` (or raise what it failed with)."""
    task = asyncio.create_task(work, name=name)
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()
        raise RuntimeError(f"{name} stopped during start-up")
    return task


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(
    settings: Settings,
    *,
    driver: SandboxDriver | None = None,
    store: MetaStore | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    clock = clock or SystemClock()
    driver = driver or build_driver(settings)
    store = store or SqliteMetaStore(settings.state_dir / "meta.db")
    sandbox_service = SandboxService(
        driver,
        clock,
        max_sandboxes=settings.max_sandboxes,
        pids_max=settings.default_pids_max,
        stop_grace_s=settings.stop_grace_s,
    )
    scheduler = Scheduler(
        driver,
        store,
        clock,
        settings.state_dir / "functions",
        SchedulerLimits(
            pids_max=settings.default_pids_max,
            stop_grace_s=settings.stop_grace_s,
            max_waiting=settings.max_waiting_requests,
            wait_timeout_s=settings.wait_timeout_s,
            start_concurrency=settings.start_concurrency,
        ),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await store.open()
        # Order matters: the scheduler re-adopts its instances before the sandbox service reaps
        # whatever else an earlier server left behind.
        functions_task = await _start(
            scheduler.run(settings.reap_interval_s, ready := asyncio.Event()), "scheduler", ready
        )
        sandboxes_task = await _start(
            sandbox_service.run(settings.reap_interval_s, ready := asyncio.Event()), "sandbox service", ready
        )
        try:
            yield
        finally:
            await sandbox_service.aclose()
            await scheduler.aclose()
            await _cancel(sandboxes_task)
            await _cancel(functions_task)
            await driver.aclose()
            await store.aclose()

    app = FastAPI(title="agentcell", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.sandboxes = sandbox_service
    app.state.scheduler = scheduler
    install_error_handlers(app)
    for module in (sandboxes, commands, files, functions, sessions):
        app.include_router(module.router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_json_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
