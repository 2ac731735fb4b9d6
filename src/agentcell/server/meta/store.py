"""The MetaStore protocol: durable metadata. Never on the warm request path (the scheduler keeps
an in-memory index and writes through on state changes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from agentcell.server.meta.records import (
    AuditRecord,
    FunctionRecord,
    InstanceRecord,
    KeyRecord,
    PausedSandboxRecord,
    SandboxSnapshotRecord,
    SessionRecord,
    TenantRecord,
    UnfinishedSaveRecord,
    UsageRecord,
    WorkspaceRecord,
)


class MetaStore(Protocol):
    async def open(self) -> None:
        """Create or migrate the schema. Called once by the app at start."""
        ...

    async def aclose(self) -> None: ...

    async def put_function(self, record: FunctionRecord) -> None:
        """Insert a new version (name, version) — versions are immutable."""
        ...

    async def function_versions(self, name: str) -> list[FunctionRecord]:
        """All versions of one function, oldest first; [] if unknown."""
        ...

    async def latest_functions(self) -> list[FunctionRecord]:
        """The newest version of every function."""
        ...

    async def delete_function(self, name: str) -> None:
        """Remove the function and all its versions (its sessions are the caller's business)."""
        ...

    async def delete_function_versions(self, name: str, versions: Sequence[int]) -> None:
        """Remove some (older, no longer running) versions of a function."""
        ...

    async def put_session(self, record: SessionRecord) -> None:
        """Insert or replace by id."""
        ...

    async def put_sessions(self, records: list[SessionRecord]) -> None:
        """Insert or replace many in one transaction (periodic last-active flush)."""
        ...

    async def live_sessions(self) -> list[SessionRecord]:
        """Sessions whose state is not `ended`."""
        ...

    async def get_session(self, session_id: str) -> SessionRecord | None: ...

    async def ended_session_keys(self, function: str) -> set[str]:
        """Keys of ended sessions of a function (for disable_session_id_reuse)."""
        ...

    async def put_instance(self, record: InstanceRecord) -> None: ...

    async def delete_instance(self, instance_id: str) -> None: ...

    async def instances(self) -> list[InstanceRecord]: ...

    async def put_workspace(self, record: WorkspaceRecord) -> None:
        """Insert or replace by path."""
        ...

    async def get_workspace(self, path: str) -> WorkspaceRecord | None: ...

    async def workspaces(self, tenant: str | None) -> list[WorkspaceRecord]:
        """All stored workspaces of a tenant (None: of every tenant), by path."""
        ...

    async def delete_workspace(self, path: str) -> None: ...

    async def tenant_stored_bytes(self, tenant: str) -> int: ...

    async def put_paused_sandbox(self, record: PausedSandboxRecord) -> None:
        """Insert or replace by id."""
        ...

    async def paused_sandboxes(self) -> list[PausedSandboxRecord]:
        """Every paused sandbox of every tenant, oldest pause first."""
        ...

    async def delete_paused_sandbox(self, sandbox_id: str) -> None: ...

    async def put_sandbox_snapshot(self, record: SandboxSnapshotRecord) -> None:
        """Insert or replace by id."""
        ...

    async def sandbox_snapshots(self) -> list[SandboxSnapshotRecord]:
        """Every sandbox snapshot of every tenant, oldest first."""
        ...

    async def delete_sandbox_snapshot(self, snapshot_id: str) -> None: ...

    async def put_unfinished_save(self, record: UnfinishedSaveRecord) -> None:
        """Insert or replace by (path, node); durable once this returns (before the save uploads)."""
        ...

    async def unfinished_saves(self, node: str) -> list[UnfinishedSaveRecord]:
        """Every unfinished save of `node`, by path."""
        ...

    async def delete_unfinished_save(self, path: str, node: str, run: str) -> None:
        """Delete the mark of `path` by `node` if `run` wrote it (a later run's stays)."""
        ...

    async def put_usage(self, records: list[UsageRecord]) -> None:
        """Append usage periods (one transaction)."""
        ...

    async def usage(self, tenant: str | None, since: float, until: float) -> list[UsageRecord]:
        """Usage periods that started in [since, until), of one tenant or of all."""
        ...

    async def append_audits(self, records: Sequence[AuditRecord]) -> None:
        """Append control-plane actions, in one transaction (durable once this returns)."""
        ...

    async def audit(
        self, since: float, until: float, action: str | None, tenant: str | None, limit: int
    ) -> list[AuditRecord]:
        """Actions at or after `since` and before `until`, oldest first, at most `limit`."""
        ...

    async def prune_history(self, before: float) -> int:
        """Forget history older than `before`: usage periods that ended, audit records made and
        ended sessions last active before it. Returns how many rows went."""
        ...

    async def put_tenant(self, record: TenantRecord) -> None:
        """Insert or replace by name."""
        ...

    async def tenants(self) -> list[TenantRecord]:
        """Every tenant, deleted ones (tombstones, `deleted_at` set) too."""
        ...

    async def delete_tenant(self, name: str, deleted_at: float) -> None:
        """Delete the tenant's keys and make the tenant a tombstone, deleted at `deleted_at`
        (its usage and audit history stay, under its name)."""
        ...

    async def put_key(self, record: KeyRecord) -> None:
        """Insert or replace by id."""
        ...

    async def keys(self) -> list[KeyRecord]:
        """Every key, revoked ones included."""
        ...
