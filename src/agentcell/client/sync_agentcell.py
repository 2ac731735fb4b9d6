"""The sync twins of `AsyncAgentcell`, `AsyncFunctions` and `AsyncSessions`, driving the async core on
a private event-loop thread (see sync.py: every method is one line of delegation).

    with Agentcell() as client:
        client.functions.deploy("chat", "./my-agent", cmd="python3 app.py")
        session = client.sessions.create("chat", key="alice-1")
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType

import httpx

from agentcell.client.agentcell import AsyncAgentcell
from agentcell.client.functions import AsyncFunctions, HookSpec
from agentcell.client.portal import EventLoopThread
from agentcell.client.sessions import AsyncSessions, AsyncWorkspaces
from agentcell.client.sync import Snapshots
from agentcell.client.sync_templates import Templates
from agentcell.client.tenants import AsyncTenants
from agentcell.client.transfer import LocalPath, ProgressCallback
from agentcell.client.usage import AsyncUsage
from agentcell.protocol.functions import (
    AffinityKind,
    FunctionConfig,
    FunctionInfo,
    StdioProcessMode,
    WorkspaceConfig,
)
from agentcell.protocol.sessions import SessionInfo, SessionState
from agentcell.protocol.tenants import KeyCreated, KeyInfo, TenantInfo, TenantQuotas
from agentcell.protocol.usage import UsageGrouping, UsageReport
from agentcell.protocol.workspaces import SnapshotInfo, WorkspaceInfo, WorkspaceList


class Functions:
    """`client.functions` (see AsyncFunctions)."""

    def __init__(self, core: AsyncFunctions, portal: EventLoopThread) -> None:
        self._core = core
        self._portal = portal

    def url(self, name: str) -> str:
        return self._core.url(name)

    def deploy(
        self,
        name: str,
        code: LocalPath,
        *,
        cmd: str | None = None,
        stdio: str | None = None,
        stdio_process: StdioProcessMode | None = None,
        port: int | None = None,
        template: str | None = None,
        env: Mapping[str, str] | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        affinity: AffinityKind | None = None,
        session_header: str | None = None,
        cookie_name: str | None = None,
        sessions_per_instance: int | None = None,
        session_ttl_s: int | None = None,
        idle_timeout_s: int | None = None,
        disable_session_id_reuse: bool | None = None,
        min_warm: int | None = None,
        max_instances: int | None = None,
        concurrency_per_instance: int | None = None,
        initialize: HookSpec | None = None,
        pre_stop: HookSpec | None = None,
        ready_timeout_s: float | None = None,
        request_timeout_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
        workspace: WorkspaceConfig | None = None,
        on_progress: ProgressCallback | None = None,
        on_pack_progress: ProgressCallback | None = None,
    ) -> FunctionInfo:
        """See AsyncFunctions.deploy."""
        return self._portal.run(
            self._core.deploy(
                name,
                code,
                cmd=cmd,
                stdio=stdio,
                stdio_process=stdio_process,
                port=port,
                template=template,
                env=env,
                cpu=cpu,
                memory_mb=memory_mb,
                disk_mb=disk_mb,
                affinity=affinity,
                session_header=session_header,
                cookie_name=cookie_name,
                sessions_per_instance=sessions_per_instance,
                session_ttl_s=session_ttl_s,
                idle_timeout_s=idle_timeout_s,
                disable_session_id_reuse=disable_session_id_reuse,
                min_warm=min_warm,
                max_instances=max_instances,
                concurrency_per_instance=concurrency_per_instance,
                initialize=initialize,
                pre_stop=pre_stop,
                ready_timeout_s=ready_timeout_s,
                request_timeout_s=request_timeout_s,
                metadata=metadata,
                workspace=workspace,
                on_progress=on_progress,
                on_pack_progress=on_pack_progress,
            )
        )

    def deploy_config(
        self,
        name: str,
        code: LocalPath,
        config: FunctionConfig,
        *,
        on_progress: ProgressCallback | None = None,
        on_pack_progress: ProgressCallback | None = None,
    ) -> FunctionInfo:
        return self._portal.run(
            self._core.deploy_config(
                name, code, config, on_progress=on_progress, on_pack_progress=on_pack_progress
            )
        )

    def get(self, name: str) -> FunctionInfo:
        return self._portal.run(self._core.get(name))

    def list(self) -> builtins.list[FunctionInfo]:
        return self._portal.run(self._core.list())

    def delete(self, name: str) -> bool:
        return self._portal.run(self._core.delete(name))


class Sessions:
    """`client.sessions` (see AsyncSessions)."""

    def __init__(self, core: AsyncSessions, portal: EventLoopThread) -> None:
        self._core = core
        self._portal = portal

    def create(
        self,
        function: str,
        key: str | None = None,
        *,
        ttl_s: int | None = None,
        idle_timeout_s: int | None = None,
        metadata: Mapping[str, str] | None = None,
        workspace: str | None = None,
    ) -> SessionInfo:
        return self._portal.run(
            self._core.create(
                function,
                key,
                ttl_s=ttl_s,
                idle_timeout_s=idle_timeout_s,
                metadata=metadata,
                workspace=workspace,
            )
        )

    def get(self, session_id: str) -> SessionInfo:
        return self._portal.run(self._core.get(session_id))

    def list(
        self,
        function: str | None = None,
        *,
        state: SessionState | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> builtins.list[SessionInfo]:
        return self._portal.run(self._core.list(function, state=state, metadata=metadata))

    def renew(
        self, session_id: str, *, ttl_s: int | None = None, idle_timeout_s: int | None = None
    ) -> SessionInfo:
        return self._portal.run(self._core.renew(session_id, ttl_s=ttl_s, idle_timeout_s=idle_timeout_s))

    def snapshot(self, session_id: str) -> SnapshotInfo:
        return self._portal.run(self._core.snapshot(session_id))

    def delete(self, session_id: str) -> bool:
        return self._portal.run(self._core.delete(session_id))


class Workspaces:
    """`client.workspaces` (see AsyncWorkspaces)."""

    def __init__(self, core: AsyncWorkspaces, portal: EventLoopThread) -> None:
        self._core = core
        self._portal = portal

    def list(self) -> WorkspaceList:
        return self._portal.run(self._core.list())

    def get(self, storage_path: str) -> WorkspaceInfo:
        return self._portal.run(self._core.get(storage_path))

    def delete(self, storage_path: str) -> bool:
        return self._portal.run(self._core.delete(storage_path))


class Usage:
    """`client.usage` (see AsyncUsage)."""

    def __init__(self, core: AsyncUsage, portal: EventLoopThread) -> None:
        self._core = core
        self._portal = portal

    def get(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        by: UsageGrouping = "session",
        tenant: str | None = None,
    ) -> UsageReport:
        return self._portal.run(self._core.get(since=since, until=until, by=by, tenant=tenant))

    def csv(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        by: UsageGrouping = "session",
        tenant: str | None = None,
    ) -> str:
        return self._portal.run(self._core.csv(since=since, until=until, by=by, tenant=tenant))


class Tenants:
    """`client.tenants` (see AsyncTenants)."""

    def __init__(self, core: AsyncTenants, portal: EventLoopThread) -> None:
        self._core = core
        self._portal = portal

    def create(self, name: str, quotas: TenantQuotas | None = None) -> TenantInfo:
        return self._portal.run(self._core.create(name, quotas))

    def list(self) -> builtins.list[TenantInfo]:
        return self._portal.run(self._core.list())

    def get(self, name: str) -> TenantInfo:
        return self._portal.run(self._core.get(name))

    def set_quotas(self, name: str, quotas: TenantQuotas) -> TenantInfo:
        return self._portal.run(self._core.set_quotas(name, quotas))

    def delete(self, name: str) -> None:
        self._portal.run(self._core.delete(name))

    def create_key(self, tenant: str, scopes: Sequence[str] = ("*",), name: str = "") -> KeyCreated:
        return self._portal.run(self._core.create_key(tenant, scopes, name))

    def keys(self, tenant: str) -> builtins.list[KeyInfo]:
        return self._portal.run(self._core.keys(tenant))

    def revoke_key(self, key_id: str) -> KeyInfo:
        return self._portal.run(self._core.revoke_key(key_id))


class Agentcell:
    """A connection to one server for its functions and sessions, sync (see AsyncAgentcell). Owns
    a connection pool and one event-loop thread: `close()`, or leaving `with`, releases both."""

    def __init__(
        self,
        *,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._portal = EventLoopThread()
        try:
            self._core = self._portal.run(_new_agentcell(api_url, api_key, request_timeout_s, transport))
        except BaseException:
            self._portal.close()
            raise
        self.functions = Functions(self._core.functions, self._portal)
        self.sessions = Sessions(self._core.sessions, self._portal)
        self.workspaces = Workspaces(self._core.workspaces, self._portal)
        self.usage = Usage(self._core.usage, self._portal)
        self.tenants = Tenants(self._core.tenants, self._portal)
        self.templates = Templates(self._core.templates, self._portal)
        self.snapshots = Snapshots(self._core.snapshots, self._portal)

    @property
    def api_url(self) -> str:
        return self._core.api_url

    def __repr__(self) -> str:
        return f"<Agentcell {self.api_url}>"

    def close(self) -> None:
        """Close the connection pool and stop the loop thread. Idempotent."""
        if self._portal.closed:
            return
        try:
            self._portal.run(self._core.aclose())
        finally:
            self._portal.close()

    def __enter__(self) -> Agentcell:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


async def _new_agentcell(
    api_url: str | None,
    api_key: str | None,
    request_timeout_s: float | None,
    transport: httpx.AsyncBaseTransport | None,
) -> AsyncAgentcell:
    """Made on the loop thread, where its connection pool will live."""
    return AsyncAgentcell(
        api_url=api_url, api_key=api_key, request_timeout_s=request_timeout_s, transport=transport
    )
