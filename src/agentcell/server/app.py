"""create_app: the one wiring point. Builds the concrete driver, services and routes from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from agentcell import __version__
from agentcell.server.api import commands, files, sandboxes
from agentcell.server.api.errors import RequestIdMiddleware, install_error_handlers
from agentcell.server.api.limits import BodyLimitMiddleware
from agentcell.server.clock import Clock, SystemClock
from agentcell.server.sandbox.driver import SandboxDriver
from agentcell.server.scheduler.sandboxes import SandboxService
from agentcell.server.settings import Settings

log = logging.getLogger(__name__)


def build_driver(settings: Settings) -> SandboxDriver:
    if settings.driver == "fake":
        from agentcell.server.sandbox.fake import FakeDriver

        return FakeDriver()
    from agentcell.server.sandbox.linux.driver import LinuxDriver, become_subreaper

    become_subreaper()
    return LinuxDriver(settings.state_dir)


def create_app(settings: Settings, *, driver: SandboxDriver | None = None, clock: Clock | None = None) -> FastAPI:
    driver = driver or build_driver(settings)
    service = SandboxService(
        driver, clock or SystemClock(), max_sandboxes=settings.max_sandboxes,
        pids_max=settings.default_pids_max, stop_grace_s=settings.stop_grace_s,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        started = asyncio.Event()
        background = asyncio.create_task(service.run(settings.reap_interval_s, started), name="sandbox service")
        await asyncio.wait([background, asyncio.create_task(started.wait())], return_when="FIRST_COMPLETED")
        if background.done():
            background.result()  # start-up failed: raise it
        try:
            yield
        finally:
            await service.aclose()
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
            await driver.aclose()

    app = FastAPI(title="agentcell", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.sandboxes = service
    install_error_handlers(app)
    for module in (sandboxes, commands, files):
        app.include_router(module.router)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_json_body_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
