"""Session workspaces: where a session's files live inside its instance, and how they reach object
storage and come back.

A workspace is bound late: the storage path is fixed when the session is created, the files are
written into whichever instance the session lands on (a warm one included) just before the
session's first request, and snapshotted back when it ends, periodically while it lives, and on
demand. An exclusive instance's workspace is `/home/user` itself; on a shared instance each
session gets `/home/user/sessions/<key, with '/' as '~'>`, made when it arrives and removed when it
leaves, so an instance only ever holds the workspaces of the sessions bound to it.

Saves that upload before any record references their prefix (a workspace's first, every pause)
are marked in the meta store first (`saving`); a mark that an earlier run of this node left (it
was killed mid-save) is dealt with at the next start (`sweep_unfinished`): the snapshot is kept
and recorded when a record wants it, the objects are deleted when none does. Nothing is ever
deleted for lack of a record alone: another node, or a save in progress, may own such a prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from agentcell.errors import AgentcellError, Conflict, QuotaExceeded, Unavailable, WorkspaceCorrupt
from agentcell.protocol.functions import FunctionConfig
from agentcell.server.auth.names import split
from agentcell.server.clock import Clock
from agentcell.server.meta.records import UnfinishedSaveRecord, UsageRecord, WorkspaceRecord
from agentcell.server.meta.store import MetaStore
from agentcell.server.sandbox.driver import SANDBOX_HOME, WRITE_TEMPS, SandboxDriver, SandboxFiles
from agentcell.server.scheduler.metering import Owner, storage_row
from agentcell.server.storage.snapshots import SnapshotInfo, Snapshots, Swept

log = logging.getLogger(__name__)

T = TypeVar("T")

SHARED_ROOT = f"{SANDBOX_HOME}/sessions"
NAMED = "_named"  # function names start with a letter: no clash with this segment
STORE_RETRY_AFTER_S = 5
"""what a caller is told to wait when the object store could not be reached"""
SAVE_RETRY_MAX_S = 600.0


def save_retry_delay_s(failures: int, first_s: float) -> float:
    """The wait before trying a failed save again: `first_s` after the first failure, doubling
    after each, up to SAVE_RETRY_MAX_S."""
    return min(first_s * 2.0 ** (failures - 1), SAVE_RETRY_MAX_S)


SESSION_SAVE = "session"
"""a save finished by its workspace row"""
PAUSE_SAVE = "pause"
"""a save finished by its paused sandbox's record (a workspace row alone does not finish it)"""
SNAPSHOT_SAVE = "snapshot"
"""a sandbox snapshot's save, finished by the snapshot's record (as a pause's)"""
FORK_SAVE = "fork"
"""a fork's snapshot, deleted once its sandboxes have started: never finished by a record"""
Holder = Literal["session", "paused sandbox", "snapshot"]
"""what holds a workspace's storage path (a snapshot's files are a workspace of `_snapshots`)"""


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
    """the live session's id, or the paused sandbox's, or the snapshot's"""
    ending: bool = False
    holder: Holder = "session"
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def busy(self, path: str) -> Conflict:
        """Why the workspace at `path` cannot be taken or deleted now, and what to do instead."""
        if self.holder == "paused sandbox":
            return Conflict(
                f"workspace {path} holds the files of paused sandbox {self.session_id}; "
                "resume it or kill it (which deletes them) first"
            )
        if self.holder == "snapshot":
            return Conflict(
                f"workspace {path} holds the files of snapshot {self.session_id}; delete the "
                f"snapshot instead (DELETE /v1/snapshots/{self.session_id})"
            )
        return Conflict(f"workspace {path} is in use by session {self.session_id}; end that session first")


class WorkspaceKeeper:
    def __init__(
        self,
        driver: SandboxDriver,
        snapshots: Snapshots,
        store: MetaStore,
        clock: Clock,
        *,
        quota_bytes: Callable[[str], int | None],
        node: str = "local",
    ) -> None:
        """`node` names this server in the marks of its unfinished saves (stable across restarts:
        only its own marks are swept)."""
        self._driver = driver
        self._snapshots = snapshots
        self._store = store
        self._clock = clock
        self._quota_of = quota_bytes
        self._node = node
        self._run = secrets.token_hex(8)  # this process: marks of another run are not in flight
        self._users: dict[str, _Use] = {}  # storage path → the live session using it
        self._saving: dict[str, int] = {}  # storage path → its saves in flight in this process
        self._marked: set[str] = set()  # storage paths whose mark this run wrote and kept
        self._storage_metered_at: float | None = None

    async def claim(self, workspace: Workspace, session_id: str) -> None:
        """Reserve the storage path for one live session. A session that is ending still holds it
        until its last snapshot is written: wait for that rather than restore an older one."""
        while (use := self._users.get(workspace.storage_path)) is not None:
            if not use.ending:
                raise use.busy(workspace.storage_path)
            await use.released.wait()
        self._users[workspace.storage_path] = _Use(session_id)

    def adopt(
        self,
        workspace: Workspace,
        session_id: str,
        *,
        paused_sandbox: bool = False,
        holder: Holder = "session",
    ) -> None:
        """A session found live after a restart keeps its claim; a paused sandbox (`session_id`
        is then its id) holds its files' workspace until it is resumed or killed, a snapshot
        until it is deleted. (`paused_sandbox=True` is `holder="paused sandbox"`.)"""
        kind: Holder = "paused sandbox" if paused_sandbox else holder
        self._users[workspace.storage_path] = _Use(session_id, holder=kind)

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
        path = workspace.storage_path
        recorded = await self._store.get_workspace(path)
        marked = recorded is None or recorded.seq == 0  # else the row's snapshot holds the prefix
        async with self.saving(workspace, SESSION_SAVE) if marked else contextlib.nullcontext():
            info = await self._with_dir(
                files,
                workspace.dir,
                lambda fd: self._snapshots.persist(path, fd, exclude, keep=config.workspace.keep),
            )
            await self.put_record(workspace, info, None)
        return info

    async def put_held_record(
        self,
        workspace: Workspace,
        info: SnapshotInfo,
        holder_id: str,
        holder: Holder,
        then: Callable[[], Awaitable[None]],
    ) -> None:
        """The row of files that `holder_id` (a paused sandbox, a snapshot) holds from now on,
        then `then` (its own record). They are held before the row is written: DELETE
        /v1/workspaces, which lists the row at once, must never find them unheld and delete them
        from under the record that follows. A failure lets go of them."""
        self.adopt(workspace, holder_id, holder=holder)
        try:
            await self.put_record(workspace, info)
            await then()
        except BaseException:
            self.unclaim(workspace, holder_id)
            raise

    async def put_record(self, workspace: Workspace, info: SnapshotInfo, error: str | None = None) -> None:
        """The workspace's row, for its snapshot `info` (a session's, a paused sandbox's, a
        sandbox snapshot's)."""
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
                error=error,
            )
        )

    @contextlib.asynccontextmanager
    async def saving(self, workspace: Workspace, kind: str) -> AsyncIterator[None]:
        """Around a save that uploads under its path before a record references it: the path is
        marked in the meta store (durably) before the body runs, and the mark is deleted when the
        body returns, its record written, and no other save of the path is in flight. A save that
        fails or is cancelled leaves the mark: a later save of the path that finishes removes it
        (the collection at the end of its persist takes the leftovers), or the next start sweeps
        the leftovers (`sweep_unfinished`). Called by `persist` and by paused sandboxes' pause."""
        path = workspace.storage_path
        self._saving[path] = self._saving.get(path, 0) + 1
        try:
            if path not in self._marked:
                await self._store.put_unfinished_save(
                    UnfinishedSaveRecord(
                        path,
                        self._node,
                        self._run,
                        workspace.tenant,
                        workspace.function,
                        workspace.key,
                        kind,
                        self._clock.now(),
                    )
                )
                self._marked.add(path)
            yield
        finally:
            self._saving[path] -= 1
            if not self._saving[path]:
                del self._saving[path]
        if path not in self._saving and path in self._marked:
            self._marked.discard(path)
            await self._store.delete_unfinished_save(path, self._node, self._run)

    async def sweep_unfinished(self) -> list[str]:
        """Once at start, after orphaned instances are reaped, sessions adopted and paused
        sandboxes loaded: deal with the saves an earlier run of this node marked and never
        finished (it was killed), each on its own (a failure leaves its mark for the next start).
        Returns the paths dealt with.

        - a paused sandbox's or a sandbox snapshot's record references the path: the pause or
          the snapshot did finish; the mark goes.
        - a live session holds the path (adopted after the restart): left to its next save.
        - an unfinished pause (no paused sandbox record): the sandbox ended with the server, as
          every running sandbox does, so its snapshot, its objects and its row are deleted.
        - an unfinished sandbox snapshot (no record), or a fork's snapshot (the forks started or
          not, nothing refers to it): its objects and its row are deleted.
        - a session's save: the leftovers no snapshot references are deleted (`Snapshots.sweep`,
          the collection a persist ends with); a snapshot that no row records yet is recorded (it
          is the session's newest save: its key restores it).
        """
        try:
            paused = {record.storage_path for record in await self._store.paused_sandboxes()}
            taken = {record.storage_path for record in await self._store.sandbox_snapshots()}
            marks = await self._store.unfinished_saves(self._node)
        except Exception:
            log.exception("unfinished saves could not be read; they are swept at the next start")
            return []
        done: list[str] = []
        for mark in marks:
            if mark.run == self._run:
                continue  # in flight in this process
            try:
                if await self._sweep_one(mark, paused, taken):
                    done.append(mark.path)
            except Exception:
                log.exception("%s: the unfinished save could not be swept; next start again", mark.path)
        return done

    async def _sweep_one(self, mark: UnfinishedSaveRecord, paused: set[str], taken: set[str]) -> bool:
        if mark.path in paused:
            log.info("%s: its pause finished before the server stopped; kept", mark.path)
        elif mark.path in taken:
            log.info("%s: its snapshot was taken before the server stopped; kept", mark.path)
        elif (use := self._users.get(mark.path)) is not None:
            log.info("%s: its save did not finish; left to the next save of %s", mark.path, use.session_id)
            return False
        elif mark.kind in (PAUSE_SAVE, SNAPSHOT_SAVE, FORK_SAVE):
            await self._drop_unfinished(mark)
        else:
            await self._finish_unfinished_save(mark)
        await self._store.delete_unfinished_save(mark.path, mark.node, mark.run)
        return True

    async def _drop_unfinished(self, mark: UnfinishedSaveRecord) -> None:
        stored = await self._snapshots.stored_bytes(mark.path)
        await self._snapshots.delete_all(mark.path)
        await self._store.delete_workspace(mark.path)
        log.warning("%s: %s (%d bytes)", mark.path, _UNFINISHED[mark.kind].format(at=mark.started_at), stored)

    async def _finish_unfinished_save(self, mark: UnfinishedSaveRecord) -> None:
        swept = await self._snapshots.sweep(mark.path)
        record = await self._store.get_workspace(mark.path)
        recorded = ""
        if swept.newest is not None and (record is None or record.seq == 0):
            workspace = Workspace(mark.path, "", mark.tenant, mark.function, mark.key, 0)
            await self.put_record(workspace, swept.newest, record.error if record else None)
            recorded = f"; its snapshot {swept.newest.seq}, which no row recorded, is now recorded"
        log.warning(
            "%s: a save begun at %s never finished (the server stopped first); %s%s",
            mark.path,
            mark.started_at,
            _swept(swept),
            recorded,
        )

    async def detach(self, instance_id: str, workspace: Workspace) -> None:
        """Remove a shared instance's copy of the workspace (an exclusive instance is destroyed)."""
        if workspace.dir == SANDBOX_HOME:
            return
        with contextlib.suppress(AgentcellError):
            await self._driver.unmount(instance_id, workspace.dir)
            await self._driver.files(instance_id).remove(workspace.dir)

    async def storage_usage(self, now: float) -> list[UsageRecord]:
        """Stored bytes times time of every workspace since the last call (none at the first)."""
        stored = await self._store.workspaces(None) if self._storage_metered_at is not None else []
        rows = self.storage_since_metered(stored, now)
        self._storage_metered_at = now
        return rows

    def storage_since_metered(self, stored: list[WorkspaceRecord], now: float) -> list[UsageRecord]:
        """The rows `storage_usage(now)` would return for `stored` (read by the caller), nothing
        advanced: the not-yet-written part of a usage read."""
        last = self._storage_metered_at
        if last is None:
            return []
        return [
            storage_row(Owner(r.tenant, "storage", r.function, session_key=r.key), last, now, r.stored_bytes)
            for r in stored
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
            raise use.busy(path)
        await self._snapshots.delete_all(path)
        await self._store.delete_workspace(path)

    async def over_quota(self, tenant: str) -> tuple[int, int] | None:
        """(bytes stored, quota) when the tenant stores its quota or more, else None: no new
        save of any kind (workspace, pause, snapshot) may start then."""
        quota = self._quota_of(tenant)
        if quota is None:
            return None
        used = await self._store.tenant_stored_bytes(tenant)
        return (used, quota) if used >= quota else None

    async def _check_quota(self, tenant: str) -> None:
        if over := await self.over_quota(tenant):
            used, quota = over
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


_UNFINISHED = {
    PAUSE_SAVE: "a pause begun at {at} never finished (the server stopped first); the sandbox ended "
    "with that server like every running sandbox, so its unfinished snapshot is deleted",
    SNAPSHOT_SAVE: "a sandbox snapshot begun at {at} was never recorded (the server stopped first), "
    "so nothing refers to its files and they are deleted",
    FORK_SAVE: "a fork's snapshot, begun at {at}, was left when the server stopped or could not be "
    "deleted after its sandboxes started; nothing refers to it, so it is deleted",
}


def _swept(swept: Swept) -> str:
    if not swept.deleted_objects:
        return "nothing was left to delete"
    return f"{swept.deleted_objects} objects it left ({swept.deleted_bytes} bytes) are deleted"
