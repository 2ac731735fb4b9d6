"""`AsyncAgentcell`: a connection to one agentcell server for its functions and sessions (async core).

    async with AsyncAgentcell() as client:                  # the pool is closed on exit
        await client.functions.deploy("chat", "./my-agent", cmd="python3 app.py")
        session = await client.sessions.create("chat", key="alice-1")

Sandboxes keep their own entry point (`AsyncSandbox.create`), each owning its connection pool;
their snapshots are listed and deleted here (`client.snapshots`).
"""

from __future__ import annotations

from types import TracebackType

import httpx

from agentcell.client.api import ApiClient
from agentcell.client.config import ClientConfig
from agentcell.client.functions import AsyncFunctions
from agentcell.client.sessions import AsyncSessions, AsyncWorkspaces
from agentcell.client.snapshots import AsyncSnapshots
from agentcell.client.templates import AsyncTemplates
from agentcell.client.tenants import AsyncTenants
from agentcell.client.usage import AsyncUsage


class AsyncAgentcell:
    """Owns one ApiClient (one connection pool) shared by `functions` and `sessions`; `aclose()`,
    or leaving `async with`, closes it. Making one does no I/O. `api_url` falls back to
    AGENTCELL_URL then http://127.0.0.1:8700; `api_key` to AGENTCELL_API_KEY; `request_timeout_s`
    (default 60) bounds connecting and each wait for bytes, so a session create that waits for an
    instance to start needs it above the function's `ready_timeout_s`."""

    def __init__(
        self,
        *,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._api = ApiClient(ClientConfig.resolve(api_url, api_key, request_timeout_s), transport=transport)
        self.functions = AsyncFunctions(self._api)
        self.sessions = AsyncSessions(self._api)
        self.workspaces = AsyncWorkspaces(self._api)
        self.usage = AsyncUsage(self._api)
        self.tenants = AsyncTenants(self._api)
        self.templates = AsyncTemplates(self._api)
        self.snapshots = AsyncSnapshots(self._api)

    @property
    def api_url(self) -> str:
        return self._api.config.api_url

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.api_url}>"

    async def aclose(self) -> None:
        await self._api.aclose()

    async def __aenter__(self) -> AsyncAgentcell:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
