"""Session workspaces: where a session's files live inside its instance, and how they reach object
storage and come back.

A workspace is bound late: the storage path is fixed when the session is created, the files are
written into whichever instance the session lands on (a warm one included) just before the
session's first request, and snapshotted back when it ends, periodically while it lives, and on
demand. An exclusive instance's workspace is `/home/user` itself; on a shared instance each
session gets `/home/user/sessions/<key, with '/' as '~'>`, made when it arrives and removed when it
leaves, so an instance only ever holds the workspaces of the sessions bound to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from agentcell.errors import AgentcellError, Conflict, QuotaExceeded, Unavailable, WorkspaceCorrupt
from agentcell.protocol.functions import FunctionConfig
from agentcell.server.auth.names import split
from agentcell.server.clock import Clock
from agentcell.server.meta.records import UsageRecord, WorkspaceRecord
from agentcell.server.meta.store import MetaStore
from agentcell.server.sandbox.driver import SANDBOX_HOME, WRITE_TEMPS, SandboxDriver, SandboxFiles
from agentcell.server.scheduler.metering import Owner, storage_row
from agentcell.server.storage.snapshots import SnapshotInfo, Snapshots

log = logging.getLogger(__name__)

T = TypeVar("T")

SHARED_ROOT = f"{SANDBOX_HOME}/sessions"
NAMED = "_named"  # function names start with a letter: no clash with this segment
STORE_RETRY_AFTER_S = 5
"""what a caller is told to wait when the object store could not be reached"""


@dataclass(frozen=True, slots=True)
class Workspace:
    """One session's workspace: its storage prefix and its directory inside the instance."""

    storage_path: str
    dir: str
    tenant: str
    function: str
    """the tenant's name for it (not qualified)"""
    key: str
    quota_bytes: int


def key_segment(key: str) -> str:
    """A session key as one path segment. Keys may hold '/' but never '~' (nor start with '.'),
    so this is one-to-one and survives URLs unescaped."""
    return key.replace("/", "~")


def storage_path(function: str, key: str, name: str | None) -> str:
    """`{tenant}/{function}/{key}`, or `{tenant}/_named/{name}`; `function` is qualified."""
    tenant, short = split(function)
    if name is not None:
        return f"{tenant}/{NAMED}/{name}"
    return f"{tenant}/{short}/{key_segment(key)}"


def workspace_for(config: FunctionConfig, function: str, key: str, path: str) -> Workspace:
    inside = SANDBOX_HOME if config.sessions_per_instance == 1 else f"{SHARED_ROOT}/{key_segment(key)}"
    tenant, short = split(function)
    return Workspace(path, inside, tenant, short, key, config.disk_mb << 20)


@dataclass(slots=True)
class _Use:
    session_id: str
    """the live session's id, or the paused sandbox's"""
    ending: bool = False
    paused_sandbox: bool = False
    released: asyncio.Event = field(default_factory=asyncio.Event)


class WorkspaceKeeper:
    def __init__(
        self,
        driver: SandboxDriver,
        snapshots: Snapshots,
        store: MetaStore,
        clock: Clock,
        *,
        quota_bytes: Callable[[str], int | None],
    ) -> None:
        self._driver = driver
        self._snapshots = snapshots
        self._store = store
        self._clock = clock
        self._quota_of = quota_bytes
        self._users: dict[str, _Use] = {}  # storage path → the live session using it
        self._storage_metered_at: float | None = None

    async def claim(self, workspace: Workspace, session_id: str) -> None:
        """Reserve the storage path for one live session. A session that is ending still holds it
        until its last snapshot is written: wait for that rather than restore an older one."""
        while (use := self._users.get(workspace.storage_path)) is not None:
            if not use.ending:
                raise Conflict(
                    f"workspace {workspace.storage_path} is in use by session {use.session_id}; "
                    "end that session first"
                )
            await use.released.wait()
        self._users[workspace.storage_path] = _Use(session_id)

    def adopt(self, workspace: Workspace, session_id: str, *, paused_sandbox: bool = False) -> None:
        """A session found live after a restart keeps its claim; a paused sandbox (`session_id`
        is then its id) holds its files' workspace until it is resumed or killed."""
        self._users[workspace.storage_path] = _Use(session_id, paused_sandbox=paused_sandbox)

    def ending(self, workspace: Workspace, session_id: str) -> None:
        if (use := self._users.get(workspace.storage_path)) is not None and use.session_id == session_id:
            use.ending = True

    def unclaim(self, workspace: Workspace, session_id: str) -> None:
        use = self._users.get(workspace.storage_path)
        if use is not None and use.session_id == session_id:
            del self._users[workspace.storage_path]
            use.released.set()

    def user_of(self, path: str) -> str | None:
        use = self._users.get(path)
        return use.session_id if use is not None else None

    async def attach(self, instance_id: str, workspace: Workspace) -> SnapshotInfo | None:
        """Make the workspace's directory in the instance and restore its last snapshot into it.
        On a shared instance the directory is a tmpfs of its own, so the session's size limit
        holds at write time there too. Returns what was restored (None: a new workspace).
        Raises WorkspaceCorrupt (recorded on the workspace) when its snapshot is missing or
        damaged, Unavailable (not recorded: nothing is wrong with it) when the object store
        cannot be reached. A restore that succeeds clears an error recorded earlier."""
        files = self._driver.files(instance_id)
        if workspace.dir != SANDBOX_HOME:
            await files.make_dir(workspace.dir)
            await self._driver.mount_tmpfs(instance_id, workspace.dir, workspace.quota_bytes)
        record = await self._store.get_workspace(workspace.storage_path)
        if record is None or record.seq == 0:
            return None
        try:
            restored = await self._with_dir(
                files,
                workspace.dir,
                lambda fd: self._snapshots.restore(workspace.storage_path, fd, owner=files.owner),
            )
            if restored is None:
                raise WorkspaceCorrupt(
                    f"workspace {workspace.storage_path}: snapshot {record.seq} is missing from the "
                    "object store; delete the workspace to start afresh"
                )
        except WorkspaceCorrupt as exc:
            await self._record_error(record, exc.message)
            raise
        except Unavailable as exc:
            raise Unavailable(
                f"workspace {workspace.storage_path} cannot be restored now: {exc.message}; retry later",
                retry_after_s=STORE_RETRY_AFTER_S,
            ) from exc
        except AgentcellError as exc:
            message = f"workspace {workspace.storage_path} could not be restored: {exc.message}"
            await self._record_error(record, message)
            raise WorkspaceCorrupt(message) from exc
        if record.error is not None:
            await self._record_error(record, None)
        return restored

    async def persist(self, instance_id: str, workspace: Workspace, config: FunctionConfig) -> SnapshotInfo:
        """Snapshot the workspace now. Raises QuotaExceeded when the tenant stores too much."""
        await self._check_quota(workspace.tenant)
        files = self._driver.files(instance_id)
        exclude = (*config.workspace.exclude, WRITE_TEMPS)
        info = await self._with_dir(
            files,
            workspace.dir,
            lambda fd: self._snapshots.persist(
                workspace.storage_path, fd, exclude, keep=config.workspace.keep
            ),
        )
        await self._store.put_workspace(
            WorkspaceRecord(
                path=workspace.storage_path,
                tenant=workspace.tenant,
                function=workspace.function,
                key=workspace.key,
                stored_bytes=await self._snapshots.stored_bytes(workspace.storage_path),
                seq=info.seq,
                snapshot_at=info.created_at,
                files=info.files,
                logical_bytes=info.logical_bytes,
                uploaded_bytes=info.uploaded_bytes,
            )
        )
        return info

    async def detach(self, instance_id: str, workspace: Workspace) -> None:
        """Remove a shared instance's copy of the workspace (an exclusive instance is destroyed)."""
        if workspace.dir == SANDBOX_HOME:
            return
        with contextlib.suppress(AgentcellError):
            await self._driver.unmount(instance_id, workspace.dir)
            await self._driver.files(instance_id).remove(workspace.dir)

    async def storage_usage(self, now: float) -> list[UsageRecord]:
        """Stored bytes times time of every workspace since the last call (none at the first)."""
        last, self._storage_metered_at = self._storage_metered_at, now
        if last is None:
            return []
        return [
            storage_row(Owner(r.tenant, "storage", r.function, session_key=r.key), last, now, r.stored_bytes)
            for r in await self._store.workspaces(None)
            if r.stored_bytes
        ]

    async def records(self, tenant: str) -> list[WorkspaceRecord]:
        return await self._store.workspaces(tenant)

    async def record(self, path: str, tenant: str) -> WorkspaceRecord | None:
        """A stored workspace of `tenant` (another tenant's is None, like an unknown one)."""
        record = await self._store.get_workspace(path)
        return record if record is not None and record.tenant == tenant else None

    def quota_bytes(self, tenant: str) -> int | None:
        return self._quota_of(tenant)

    async def delete(self, path: str) -> None:
        """Drop every snapshot of a stored workspace that no live session uses."""
        if (use := self._users.get(path)) is not None:
            if use.paused_sandbox:
                raise Conflict(
                    f"workspace {path} holds the files of paused sandbox {use.session_id}; "
                    "resume it or kill it (which deletes them) first"
                )
            raise Conflict(f"workspace {path} is in use by session {use.session_id}; end the session first")
        await self._snapshots.delete_all(path)
        await self._store.delete_workspace(path)

    async def _check_quota(self, tenant: str) -> None:
        quota = self._quota_of(tenant)
        if quota is None:
            return
        used = await self._store.tenant_stored_bytes(tenant)
        if used >= quota:
            raise QuotaExceeded(
                f"tenant {tenant} stores {used} bytes of workspaces, at its quota of {quota}; "
                "delete workspaces it no longer needs (DELETE /v1/workspaces/{path}) or raise the "
                "quota (the tenant's max_storage_mb, or AGENTCELL_TENANT_STORAGE_QUOTA_MB)"
            )

    async def note_error(self, workspace: Workspace, message: str) -> None:
        """Record why saving the workspace failed (the workspaces API shows it until a snapshot or
        a restore of it succeeds); a workspace never saved gets a record with no snapshot."""
        record = await self._store.get_workspace(workspace.storage_path)
        if record is None:
            record = WorkspaceRecord(
                workspace.storage_path, workspace.tenant, workspace.function, workspace.key
            )
        await self._record_error(record, message)

    async def _record_error(self, record: WorkspaceRecord, message: str | None) -> None:
        record.error = message
        await self._store.put_workspace(record)

    @staticmethod
    async def _with_dir(files: SandboxFiles, path: str, work: Callable[[int], Awaitable[T]]) -> T:
        fd = await files.open_dir(path)
        try:
            return await work(fd)
        finally:
            os.close(fd)
