"""The `/mcp` route, with agentcell's MCP server (api/mcp.py) built and started on its first request.

Importing the official `mcp` SDK and building the server took about a third of the whole server's
start (~0.5 s of CPU on a quiet machine, over 1.5 s on a busy one, before the first request could
be served), paid by every start, although most servers never get an MCP call. The first MCP
request pays it instead, once.

The SDK's session manager runs in a task of its own from then until shutdown: its task group must
be entered and left by one task, which no request's task is. That task starts from an empty
context, so that nothing of the first request (its principal, its log ids) stays with it; each
session's task is still started from the request that opens the session, as before.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.sandboxes import SandboxService

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    from agentcell.server.api.publish import Publisher

MCP_PATH = "/mcp"


class LazyMcp:
    """The `/mcp` endpoint (an ASGI app): builds the MCP server on first use, then serves it."""

    def __init__(self, sandboxes: SandboxService, pauses: SandboxPauses, publisher: Publisher) -> None:
        self._sandboxes = sandboxes
        self._pauses = pauses
        self._publisher = publisher
        self._app: ASGIApp | None = None
        self._starting = asyncio.Lock()
        self._stop = asyncio.Event()
        self._sessions: asyncio.Task[None] | None = None

    def routes(self) -> list[BaseRoute]:
        return [Route(MCP_PATH, self, name="mcp")]  # every method, as the SDK's own route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app or await self._start()
        await app(scope, receive, send)

    async def aclose(self) -> None:
        """At shutdown: end the MCP sessions (if the server was ever started)."""
        self._stop.set()
        if self._sessions is not None:
            await self._sessions

    async def _start(self) -> ASGIApp:
        async with self._starting:
            if self._app is None:
                from agentcell.server.api import mcp  # the point of this module: not before now

                server = mcp.build_mcp_server(self._sandboxes, self._pauses, self._publisher)
                routes = mcp.mcp_routes(server)
                (app,) = [r.app for r in routes if isinstance(r, Route) and r.path == MCP_PATH]
                running = asyncio.get_running_loop().create_future()
                sessions = self._run(server.session_manager, running)
                self._sessions = asyncio.create_task(sessions, name="mcp", context=contextvars.Context())
                await running  # raises what stopped the session manager from starting
                self._app = app
        return self._app

    async def _run(self, manager: StreamableHTTPSessionManager, running: asyncio.Future[None]) -> None:
        try:
            async with manager.run():
                running.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not running.done():
                running.set_exception(exc)
            raise
