"""SandboxSnapshots: snapshots of running sandboxes, new sandboxes started from them, and forks.

A snapshot keeps what a pause keeps, the files of `/home/user` (the Snapshots machinery of session
workspaces), with the sandbox's request (template, env, resources, network). Memory is not saved:
a sandbox started from a snapshot runs none of the source's processes or kernels. The source keeps
running, its id and deadline untouched; it is frozen (cgroup freezer) only while its files are
read, so the snapshot is point-in-time for its own processes, and thawed after, whatever happened;
changes through its files API meanwhile wait for the save to end (scheduler/file_changes.py).

A snapshot is stored under its own path `{tenant}/_snapshots/{id}-{version}` (a new one at every
save: a path is written once and only restored from after, which the Snapshots' change-time
shortcut for a restored prefix needs), recorded in the meta store (it survives its source and
server restarts) and in a workspace row of the pseudo-function `_snapshots` (the tenant's storage
quota and usage count it). It belongs to the tenant whose sandbox it was taken of; others do not
find it. It is kept until deleted. Its id (`snap_…`) cannot be a template name (those have no '_').

A fork takes one snapshot the same way, starts `count` sandboxes from it, each succeeding or
failing on its own, and deletes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from pydantic import ValidationError

from agentcell.errors import (
    AgentcellError,
    Conflict,
    InvalidArgument,
    NotFound,
    QuotaExceeded,
    Unavailable,
    WorkspaceCorrupt,
)
from agentcell.protocol.sandboxes import MAX_FORKS, SNAPSHOT_ID_PREFIX, SandboxCreate
from agentcell.server.auth.principal import current_or_none
from agentcell.server.clock import Clock
from agentcell.server.meta.records import SandboxSnapshotRecord
from agentcell.server.meta.store import MetaStore
from agentcell.server.sandbox.driver import SANDBOX_HOME, SandboxDriver
from agentcell.server.scheduler.sandbox_pause import SandboxPauses, restore_home, save_home
from agentcell.server.scheduler.sandboxes import Sandbox, SandboxService
from agentcell.server.scheduler.workspaces import (
    FORK_SAVE,
    SNAPSHOT_SAVE,
    STORE_RETRY_AFTER_S,
    Workspace,
    WorkspaceKeeper,
)
from agentcell.server.storage.snapshots import SnapshotInfo, Snapshots

log = logging.getLogger(__name__)

SNAPSHOTS_SEGMENT = "_snapshots"
"""the storage path segment of snapshots (function names start with a letter: no clash)"""
ID_PREFIX = SNAPSHOT_ID_PREFIX
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
Adjust = Callable[[SandboxCreate], SandboxCreate]


def new_snapshot_id() -> str:
    return ID_PREFIX + secrets.token_hex(8)


def is_snapshot_id(text: str) -> bool:
    """Whether `text` names a snapshot rather than a template (template names have no '_')."""
    return text.startswith(ID_PREFIX)


def storage_path(tenant: str, snapshot_id: str) -> str:
    """A new path for one save of the snapshot (or of a fork's, `snapshot_id` then being new)."""
    return f"{tenant}/{SNAPSHOTS_SEGMENT}/{snapshot_id}-{secrets.token_hex(4)}"


def _visible(tenant: str) -> bool:
    principal = current_or_none()
    return principal is None or principal.tenant == tenant


@dataclass(slots=True)
class SandboxSnapshot:
    record: SandboxSnapshotRecord
    request: SandboxCreate
    """the source sandbox's, which a sandbox started from it begins with"""

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def workspace(self) -> Workspace:
        return _workspace(self.record.tenant, self.record.id, self.record.storage_path, self.request)


class SandboxSnapshots:
    """Owns snapshots: take, list, delete them, start sandboxes from them, fork. A snapshot of a
    sandbox runs under that sandbox's lock (SandboxPauses.lock): a pause, resume or kill waits."""

    def __init__(
        self,
        sandboxes: SandboxService,
        pauses: SandboxPauses,
        driver: SandboxDriver,
        snapshots: Snapshots,
        store: MetaStore,
        keeper: WorkspaceKeeper,
        clock: Clock,
    ) -> None:
        self._sandboxes = sandboxes
        self._pauses = pauses
        self._driver = driver
        self._snapshots = snapshots
        self._store = store
        self._keeper = keeper
        self._clock = clock
        self._by_id: dict[str, SandboxSnapshot] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def load(self) -> int:
        """Snapshots from the meta store (at start, before unfinished saves are swept). Returns
        how many."""
        for record in await self._store.sandbox_snapshots():
            try:
                snapshot = SandboxSnapshot(record, SandboxCreate.model_validate_json(record.request_json))
            except ValidationError as exc:
                log.warning("snapshot %s: its record is unreadable, skipped: %s", record.id, exc)
                continue
            self._by_id[record.id] = snapshot
            self._keeper.adopt(snapshot.workspace, record.id, holder="snapshot")
        return len(self._by_id)

    # -- lookups ---------------------------------------------------------------------------------

    def get(self, snapshot_id: str) -> SandboxSnapshot:
        """The caller's snapshot of this id. Raises NotFound."""
        found = self._by_id.get(snapshot_id)
        if found is None or not _visible(found.record.tenant):
            raise NotFound(f"snapshot {snapshot_id!r} not found (it may have been deleted)")
        return found

    def find(self, sandbox_id: str | None = None, name: str | None = None) -> list[SandboxSnapshot]:
        """The caller's snapshots, of one sandbox and with one name or id when given, oldest first."""
        found = [
            s
            for s in self._by_id.values()
            if _visible(s.record.tenant)
            and sandbox_id in (None, s.record.sandbox_id)
            and name in (None, s.record.name, s.id)
        ]
        return sorted(found, key=_order)

    def find_page(
        self, sandbox_id: str | None, name: str | None, limit: int, after: tuple[float, str] | None
    ) -> tuple[list[SandboxSnapshot], bool]:
        """At most `limit` of `find`'s snapshots, those after the (created_at, id) `after` when
        given (the last of the page before), and whether more follow."""
        found = self.find(sandbox_id, name)
        if after is not None:
            found = [s for s in found if _order(s) > after]
        return found[:limit], len(found) > limit

    def needs_template(self, name: str) -> str | None:
        """TemplateDependent: the snapshots (of any tenant) whose sandboxes start from `name`."""
        count = sum(s.request.template == name for s in self._by_id.values())
        return f"needed by {count} sandbox snapshot(s) (delete them first)" if count else None

    # -- take, delete ----------------------------------------------------------------------------

    async def take(self, sandbox_id: str, name: str | None = None) -> SandboxSnapshot:
        """Snapshot a running sandbox's files; it keeps running. A `name` the tenant's snapshots
        already have gives that snapshot (its id) the new files. Raises NotFound, Conflict (the
        sandbox is paused), InvalidArgument (a bad name), QuotaExceeded, Unavailable."""
        if name is not None and not NAME.fullmatch(name):
            raise InvalidArgument(
                f"a snapshot name is 1-128 letters, digits and ._:/- (starting with a letter or "
                f"digit), got {name!r}"
            )
        tenant = self._source(sandbox_id).tenant
        async with self._lock(f"{tenant}/name/{name}" if name else sandbox_id):
            replaced = (
                next((s for s in self.find(name=name) if s.record.name == name), None) if name else None
            )
            snapshot_id = replaced.id if replaced is not None else new_snapshot_id()
            snapshot = await self._take(sandbox_id, tenant, snapshot_id, name)
            if replaced is not None:
                self._keeper.unclaim(replaced.workspace, snapshot_id)
                await self._drop_files(replaced.record.storage_path)
        log.info("sandbox %s: snapshot %s taken", sandbox_id, snapshot_id)
        return snapshot

    async def _take(
        self, sandbox_id: str, tenant: str, snapshot_id: str, name: str | None
    ) -> SandboxSnapshot:
        """Marked as a save in progress until the snapshot's record is written: a server killed
        before that leaves the mark, and its next start deletes the files (nothing references them)."""
        await self._check_quota(tenant)
        path = storage_path(tenant, snapshot_id)
        async with self._pauses.lock(sandbox_id):
            sandbox = self._source(sandbox_id)
            workspace = _workspace(tenant, snapshot_id, path, sandbox.request)
            async with self._keeper.saving(workspace, SNAPSHOT_SAVE):
                info = await self._save_frozen(sandbox, path)
                record = SandboxSnapshotRecord(
                    id=snapshot_id,
                    tenant=tenant,
                    name=name,
                    sandbox_id=sandbox.id,
                    request_json=sandbox.request.model_dump_json(),
                    storage_path=path,
                    created_at=self._clock.now(),
                )
                put_snapshot = partial(self._store.put_sandbox_snapshot, record)
                await self._keeper.put_held_record(workspace, info, snapshot_id, "snapshot", put_snapshot)
        snapshot = self._by_id[snapshot_id] = SandboxSnapshot(record, sandbox.request)
        return snapshot

    async def delete(self, snapshot_id: str) -> None:
        """Delete the caller's snapshot, its files and its records. Raises NotFound."""
        snapshot = self.get(snapshot_id)
        name = snapshot.record.name
        async with self._lock(f"{snapshot.record.tenant}/name/{name}" if name else snapshot_id):
            snapshot = self.get(snapshot_id)  # deleted meanwhile: NotFound
            path = snapshot.record.storage_path
            await self._drop_files(path)
            await self._store.delete_sandbox_snapshot(snapshot_id)
            self._keeper.unclaim(snapshot.workspace, snapshot_id)
            self._by_id.pop(snapshot_id, None)
        log.info("snapshot %s deleted", snapshot_id)

    # -- sandboxes from snapshots ----------------------------------------------------------------

    async def start(self, snapshot_id: str, adjust: Adjust | None = None) -> Sandbox:
        """A new sandbox with the caller's snapshot's request (`adjust`ed: the timeout, metadata
        of the create) and its files. Raises NotFound, WorkspaceCorrupt, Unavailable, QuotaExceeded."""
        snapshot = self.get(snapshot_id)
        request = adjust(snapshot.request) if adjust is not None else snapshot.request
        return await self._start(request, snapshot.record.storage_path, f"snapshot {snapshot_id}")

    async def fork(
        self, sandbox_id: str, count: int, timeout_s: int | None = None
    ) -> list[Sandbox | AgentcellError]:
        """Snapshot the running sandbox once (it keeps running) and start `count` sandboxes from
        it with its request (`timeout_s`, when given, as their timeout); one sandbox or the error
        that kept it from starting per fork. The snapshot is deleted once they have started.
        Raises InvalidArgument (count), NotFound, Conflict (paused), QuotaExceeded, Unavailable."""
        if not 1 <= count <= MAX_FORKS:
            raise InvalidArgument(f"count must be between 1 and {MAX_FORKS}, got {count}")
        source = self._source(sandbox_id)
        await self._check_quota(source.tenant)
        request = source.request
        if timeout_s is not None:
            request = request.model_copy(update={"timeout_s": timeout_s})
        path = storage_path(source.tenant, f"fork-{sandbox_id}")
        workspace = _workspace(source.tenant, sandbox_id, path, request)
        forks: list[Sandbox | AgentcellError] = []
        with contextlib.suppress(_LeftForTheSweep):
            async with self._keeper.saving(workspace, FORK_SAVE):  # a crash: the next start deletes it
                try:
                    async with self._pauses.lock(sandbox_id):
                        await self._save_frozen(self._source(sandbox_id), path)
                    forks = list(await asyncio.gather(*(self._fork_one(request, path) for _ in range(count))))
                except BaseException:
                    with contextlib.suppress(AgentcellError):  # else left to the next start's sweep
                        await self._snapshots.delete_all(path)
                    raise
                await self._delete_fork_snapshot(path)
        return forks

    async def _delete_fork_snapshot(self, path: str) -> None:
        """Raises _LeftForTheSweep when it cannot: the save's mark then stays, and the next start
        deletes the files (the forks have started all the same)."""
        try:
            await self._snapshots.delete_all(path)
        except AgentcellError as exc:
            log.warning(
                "%s: a fork's snapshot could not be deleted now, so the next start will: %s", path, exc
            )
            raise _LeftForTheSweep from exc

    async def _fork_one(self, request: SandboxCreate, path: str) -> Sandbox | AgentcellError:
        try:
            return await self._start(request, path, "the fork")
        except AgentcellError as exc:
            log.info("a fork (%s) did not start: %s", path, exc.message)
            return exc

    async def _start(self, request: SandboxCreate, path: str, what: str) -> Sandbox:
        sandbox = await self._sandboxes.create(request)
        try:
            await self._restore(sandbox, path, what)
        except BaseException:
            with contextlib.suppress(AgentcellError):
                await self._sandboxes.kill(sandbox.id)
            raise
        return sandbox

    # -- internals -------------------------------------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _source(self, sandbox_id: str) -> Sandbox:
        """The caller's running sandbox to snapshot. Raises NotFound, Conflict (paused or pausing)."""
        if self._pauses.paused(sandbox_id) is not None:
            raise Conflict(
                f"sandbox {sandbox_id} is paused; resume it (POST /v1/sandboxes/{sandbox_id}/resume, "
                "or E2B's Sandbox.connect) before taking a snapshot of it or forking it"
            )
        sandbox = self._sandboxes.get(sandbox_id)
        if not sandbox.is_running:
            raise Conflict(f"sandbox {sandbox_id} is {'pausing' if sandbox.pausing else sandbox.state}")
        return sandbox

    async def _save_frozen(self, sandbox: Sandbox, path: str) -> SnapshotInfo:
        """Its files while its processes are frozen and changes through its API wait (a file
        rewritten meanwhile is one version in the snapshot, never a mix, and the snapshot is one
        point in time for the API's changes too: those answered before it are in it, those made
        after are not, none half); thawed after, whatever happened."""
        async with sandbox.file_changes.held():
            frozen = await self._driver.freeze(sandbox.id)
            try:
                return await save_home(self._driver, self._snapshots, sandbox.id, path)
            finally:
                if frozen:
                    with contextlib.suppress(NotFound):  # ended meanwhile by a door that takes no lock
                        await self._driver.thaw(sandbox.id)

    async def _restore(self, sandbox: Sandbox, path: str, what: str) -> None:
        try:
            restored = await restore_home(self._driver, self._snapshots, sandbox.id, path)
        except WorkspaceCorrupt:
            raise
        except Unavailable as exc:
            raise Unavailable(
                f"{what} cannot be started now: {exc.message}; retry later", retry_after_s=STORE_RETRY_AFTER_S
            ) from exc
        except AgentcellError as exc:
            raise WorkspaceCorrupt(f"{what}: its files could not be restored: {exc.message}") from exc
        if restored is None:
            raise WorkspaceCorrupt(f"{what}: its files ({path}) are missing from object storage; delete it")

    async def _drop_files(self, path: str) -> None:
        await self._snapshots.delete_all(path)
        await self._store.delete_workspace(path)

    async def _check_quota(self, tenant: str) -> None:
        if over := await self._keeper.over_quota(tenant):
            used, quota = over
            raise QuotaExceeded(
                f"tenant {tenant} stores {used} bytes of workspaces, paused sandboxes and snapshots, "
                f"at its quota of {quota}, so no snapshot can be taken; delete snapshots or "
                "workspaces it no longer needs, or raise the quota"
            )


def _order(snapshot: SandboxSnapshot) -> tuple[float, str]:
    return snapshot.record.created_at, snapshot.id


class _LeftForTheSweep(Exception):
    """A fork's snapshot that could not be deleted: its save's mark is kept for the next start."""


def _workspace(tenant: str, key: str, path: str, request: SandboxCreate) -> Workspace:
    return Workspace(path, SANDBOX_HOME, tenant, SNAPSHOTS_SEGMENT, key, request.disk_mb << 20)
