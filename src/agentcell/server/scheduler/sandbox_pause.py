"""SandboxPauses: pause a sandbox as persist-and-stop, resume it as start-and-restore.

A pause snapshots the sandbox's `/home/user` into object storage under `{tenant}/_sandboxes/{id}`
(the Snapshots machinery of session workspaces, one snapshot kept), writes the paused sandbox (its
request: template, env, metadata, resources, timeout; its tenant; labels an API layer keeps with it)
to the meta store, and only then stops its instance. Memory is not saved: processes and code
kernels end. A resume starts a new instance with the same id and request and restores the files into
it before the sandbox is handed back; the snapshot is then deleted.

The snapshot is point-in-time: the sandbox's processes are frozen (cgroup freezer) from just
before it is taken until the instance is stopped, so a file rewritten in place while the sandbox
pauses comes back as one version of it, never a mix; a pause that fails thaws them again. It is
point-in-time for the files API too: the pause holds the sandbox's FileChanges gate while it saves
(scheduler/file_changes.py), so the changes in flight finish before the save lists the files, and
those that begin once the pause has begun fail (409, LiveFiles) rather than wait for an instance
about to stop.

A paused sandbox holds no instance, cores or memory (it does not count against the node's
`max_sandboxes` or the tenant's sandbox quotas). Its stored bytes count against the tenant's storage
quota and show in usage like a workspace of the pseudo-function `_sandboxes` (path
`{tenant}/_sandboxes/{id}`, claimed so that the workspaces API cannot delete it). It is deleted,
snapshot and record, `retention_s` after its pause unless resumed or killed first; paused sandboxes
survive a server restart (running ones do not).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from pydantic import ValidationError

from agentcell.errors import (
    AgentcellError,
    Conflict,
    NotFound,
    QuotaExceeded,
    Unavailable,
    WorkspaceCorrupt,
)
from agentcell.protocol.sandboxes import AUTO_RESUME_MIN_TIMEOUT_S, SandboxCreate, SandboxState
from agentcell.server.auth.principal import Principal, acting_as, current_or_none
from agentcell.server.clock import Clock
from agentcell.server.meta.records import PausedSandboxRecord
from agentcell.server.meta.store import MetaStore
from agentcell.server.sandbox.driver import SANDBOX_HOME, WRITE_TEMPS, SandboxDriver, SandboxFiles
from agentcell.server.scheduler.sandbox_order import OrderKey, SandboxOrder, order_key
from agentcell.server.scheduler.sandboxes import Sandbox, SandboxService
from agentcell.server.scheduler.workspaces import (
    PAUSE_SAVE,
    STORE_RETRY_AFTER_S,
    Workspace,
    WorkspaceKeeper,
    save_retry_delay_s,
)
from agentcell.server.storage.snapshots import SnapshotInfo, Snapshots

log = logging.getLogger(__name__)

T = TypeVar("T")

SANDBOXES_SEGMENT = "_sandboxes"
"""the storage path segment of paused sandboxes (function names start with a letter: no clash)"""
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
TIMEOUT_PAUSE_ATTEMPTS = 10
"""a pause at the timeout that fails is tried again this many times in all before the kill"""
TIMEOUT_PAUSE_RETRY_S = 30.0
"""the wait after its first failure; it doubles after each (`save_retry_delay_s`)"""


def storage_path(tenant: str, sandbox_id: str) -> str:
    return f"{tenant}/{SANDBOXES_SEGMENT}/{sandbox_id}"


def _visible(sandbox: Sandbox) -> bool:
    principal = current_or_none()
    return principal is None or principal.tenant == sandbox.tenant


@dataclass(slots=True)
class PausedSandbox:
    """A paused sandbox: `sandbox` (state `paused`, `expires_at` = when it will be deleted) and the
    durable record it was loaded from or written as."""

    sandbox: Sandbox
    record: PausedSandboxRecord
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def workspace(self) -> Workspace:
        return _workspace(self.sandbox, self.record.storage_path)


class SandboxPauses:
    """Owns paused sandboxes: pause, resume, kill, find and expire them. Every change of one
    sandbox (pause, resume, kill) runs under that sandbox's lock, so two of them never interleave."""

    def __init__(
        self,
        sandboxes: SandboxService,
        driver: SandboxDriver,
        snapshots: Snapshots,
        store: MetaStore,
        keeper: WorkspaceKeeper,
        clock: Clock,
        *,
        retention_s: float = DEFAULT_RETENTION_S,
        timeout_pause_attempts: int = TIMEOUT_PAUSE_ATTEMPTS,
        timeout_pause_retry_s: float = TIMEOUT_PAUSE_RETRY_S,
    ) -> None:
        self._sandboxes = sandboxes
        self._driver = driver
        self._snapshots = snapshots
        self._store = store
        self._keeper = keeper
        self._clock = clock
        self._retention_s = retention_s
        self._timeout_pause_attempts = timeout_pause_attempts
        self._timeout_pause_retry_s = timeout_pause_retry_s
        self._timeout_pause_failures: dict[str, int] = {}
        self._paused: dict[str, PausedSandbox] = {}
        self._paused_order: SandboxOrder[Sandbox] = SandboxOrder()
        """`_paused` in the order of lists, changed with it"""
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self.labeller: Callable[[Sandbox], dict[str, str]] | None = None
        """What an API layer keeps with a sandbox it pauses (the E2B template name), or None."""
        self.resuming: Callable[[PausedSandbox], None] | None = None
        """What is restored of a sandbox before it runs again, on every resume whoever asks for it
        (the E2B registry makes a private sandbox private again before its ports can be reached),
        or None."""
        sandboxes.on_timeout = self.pause_at_timeout
        sandboxes.is_paused = lambda sandbox_id: self.paused(sandbox_id) is not None

    # -- lifecycle of the service ---------------------------------------------------------------

    async def load(self) -> int:
        """Paused sandboxes from the meta store (at start). Returns how many."""
        for record in await self._store.paused_sandboxes():
            try:
                paused = _from_record(record)
            except (ValidationError, ValueError) as exc:
                log.warning("paused sandbox %s: its record is unreadable, skipped: %s", record.id, exc)
                continue
            self._paused[record.id] = paused
            self._paused_order.add(paused.sandbox)
            self._keeper.adopt(paused.workspace, record.id, paused_sandbox=True)
        return len(self._paused)

    async def run(self, interval_s: float, started: asyncio.Event | None = None) -> None:
        """Load, then delete paused sandboxes past their retention every `interval_s`, until cancelled."""
        loaded = await self.load()
        if loaded:
            log.info("%d paused sandbox(es) loaded", loaded)
        if started is not None:
            started.set()
        while True:
            await self.expire_once(self._clock.now())
            await asyncio.sleep(interval_s)

    # -- lookups ---------------------------------------------------------------------------------

    def paused(self, sandbox_id: str) -> PausedSandbox | None:
        """The paused sandbox of this id that the caller may see, or None."""
        found = self._paused.get(sandbox_id)
        return found if found is not None and _visible(found.sandbox) else None

    def get(self, sandbox_id: str) -> Sandbox:
        """A paused or live sandbox. Raises NotFound."""
        found = self.paused(sandbox_id)
        return found.sandbox if found is not None else self._sandboxes.get(sandbox_id)

    def held_by(self, tenant: str) -> int:
        """How many sandboxes, live or paused, `tenant` has (whoever asks)."""
        paused = sum(p.sandbox.tenant == tenant for p in self._paused.values())
        return self._sandboxes.held_by(tenant) + paused

    def all_states(self) -> list[SandboxState]:
        """The state of every sandbox on this node, of every tenant (for the metrics)."""
        live: list[SandboxState] = [s.state for s in self._sandboxes.all() if s.id not in self._paused]
        return live + ["paused"] * len(self._paused)

    def needs_template(self, name: str) -> str | None:
        """TemplateDependent: the paused sandboxes (of any tenant) that resume from template `name`."""
        paused = sum(p.sandbox.request.template == name for p in self._paused.values())
        return f"needed by {paused} paused sandbox(es) to resume (delete them first)" if paused else None

    def find(self, metadata: dict[str, str], state: SandboxState | None = None) -> list[Sandbox]:
        """Live and paused sandboxes the caller may see, oldest first, ids breaking ties."""
        live, paused = self._found_after(metadata, state, None)
        return sorted(itertools.chain(live, paused), key=order_key)  # two sorted runs: merged in C

    def find_page(
        self,
        metadata: dict[str, str],
        state: SandboxState | None,
        limit: int,
        after: OrderKey | None,
    ) -> tuple[list[Sandbox], bool]:
        """At most `limit` of `find`'s sandboxes, those after the (created_at, id) `after` when
        given (the last of the page before, which may have ended since), and whether more follow.
        Reads from its place on only as far as it finds `limit` + 1 (all, when a filter finds fewer)."""
        live, paused = self._found_after(metadata, state, after)
        found = list(itertools.islice(heapq.merge(live, paused, key=order_key), limit + 1))
        return found[:limit], len(found) > limit

    def _found_after(
        self, metadata: dict[str, str], state: SandboxState | None, after: OrderKey | None
    ) -> tuple[Iterable[Sandbox], Iterable[Sandbox]]:
        """`find`'s live sandboxes and its paused ones from the first past `after`, each in order,
        found as they are taken. A sandbox being paused or resumed is in both registries for a
        moment: it is listed as paused."""
        live: Iterable[Sandbox] = []
        if state != "paused":
            found = self._sandboxes.find_after(metadata, state, after)
            live = (s for s in found if s.id not in self._paused)
        paused: Iterable[Sandbox] = []
        if state in (None, "paused"):
            paused = self._paused_after(metadata, after)
        return live, paused

    def _paused_after(self, metadata: dict[str, str], after: OrderKey | None) -> Iterator[Sandbox]:
        for sandbox in self._paused_order.after(after):
            if _visible(sandbox) and sandbox.matches(metadata, None):
                yield sandbox

    # -- pause, resume, kill ---------------------------------------------------------------------

    async def pause(self, sandbox_id: str) -> PausedSandbox:
        """Persist the running sandbox's files and stop it. Raises NotFound, Conflict (already
        paused, or not running), QuotaExceeded; on any failure the sandbox keeps running."""
        async with self._lock(sandbox_id):
            if self.paused(sandbox_id) is not None:
                raise Conflict(f"sandbox {sandbox_id} is already paused; resume it or kill it")
            return await self._pause(self._sandboxes.running(sandbox_id))

    async def pause_at_timeout(self, sandbox: Sandbox) -> bool:
        """SandboxService's timeout hook: pause a sandbox created with `on_timeout="pause"`. False
        (kill it) for any other. A pause that fails (the object store down, the storage quota
        full) keeps the sandbox running and is tried again later, backing off; only after
        `timeout_pause_attempts` failures does the sandbox end without its files.

        A sandbox that a pause, resume or kill is working on right now is left to it (True): the
        reaper must not stop it under a pause that is saving its files (the pause would end in
        an error with the sandbox paused after all). Its deadline has passed, so a pause that
        fails leaves it to the next round of the reaper."""
        if self._lock(sandbox.id).locked():
            return True
        if sandbox.request.on_timeout != "pause":
            return False
        try:
            async with self._lock(sandbox.id):
                if sandbox.state == "running" and sandbox.id not in self._paused:
                    await self._pause(sandbox)
                    log.info("sandbox %s: paused at its timeout", sandbox.id)
        except Exception as exc:
            return self._retry_pause_later(sandbox, exc)
        self._timeout_pause_failures.pop(sandbox.id, None)
        return True

    def _retry_pause_later(self, sandbox: Sandbox, exc: Exception) -> bool:
        """After a failed pause at the timeout: True (keep it running, with a new deadline to try
        again), or False once the attempts are spent (the kill loses its files: said loudly)."""
        failures = self._timeout_pause_failures.get(sandbox.id, 0) + 1
        why = exc.message if isinstance(exc, AgentcellError) else repr(exc)
        if failures >= self._timeout_pause_attempts:
            self._timeout_pause_failures.pop(sandbox.id, None)
            log.error(
                "sandbox %s: pause at its timeout failed %d times, so it ends and its files are lost: %s",
                sandbox.id,
                failures,
                why,
            )
            return False
        self._timeout_pause_failures[sandbox.id] = failures
        delay = save_retry_delay_s(failures, self._timeout_pause_retry_s)
        sandbox.expires_at = self._clock.now() + delay
        log.warning(
            "sandbox %s: pause at its timeout failed (attempt %d of %d); it keeps running and the "
            "pause is tried again in %g s: %s",
            sandbox.id,
            failures,
            self._timeout_pause_attempts,
            delay,
            why,
        )
        return True

    async def wake(self, sandbox_id: str) -> None:
        """Work has reached sandbox `sandbox_id` (a command, code, a file operation, a request to
        one of its ports): resume it first if it is paused and was created with `auto_resume`.
        Its timeout is then its own, but at least AUTO_RESUME_MIN_TIMEOUT_S. Anything else is left
        as it is, for the work's own lookup to answer (not found, paused, not running). Raises
        what `resume` raises: the work cannot be done on a sandbox that would not start."""
        paused = self.paused(sandbox_id)
        if paused is None or not paused.sandbox.request.auto_resume:
            return
        log.info("sandbox %s: work reached it while paused: resuming it (auto_resume)", sandbox_id)
        timeout_s = max(AUTO_RESUME_MIN_TIMEOUT_S, paused.sandbox.request.timeout_s)
        await self.resume(sandbox_id, timeout_s, running_ok=True)

    async def resume(
        self, sandbox_id: str, timeout_s: int | None = None, *, running_ok: bool = False
    ) -> Sandbox:
        """Start the paused sandbox again with its id and request (`timeout_s`, when given, replaces
        its timeout) and restore its files before returning it. A running sandbox is returned as it
        is with `running_ok`, else Conflict. Raises NotFound, WorkspaceCorrupt (its snapshot is gone
        or damaged: it stays paused), Unavailable (the object store cannot be reached now: it
        stays paused, retry), QuotaExceeded (no room for it now)."""
        async with self._lock(sandbox_id):
            paused = self.paused(sandbox_id)
            if paused is None:
                running = self._sandboxes.running(sandbox_id)
                if not running_ok:
                    raise Conflict(f"sandbox {sandbox_id} is running, not paused")
                return running
            if self.resuming is not None:
                self.resuming(paused)
            request = paused.sandbox.request
            if timeout_s is not None:
                request = request.model_copy(update={"timeout_s": timeout_s})
            with _as_owner(paused.sandbox):
                sandbox = await self._sandboxes.create(
                    request, sandbox_id=sandbox_id, created_at=paused.sandbox.created_at
                )
            try:
                await self._restore(sandbox, paused.record.storage_path)
            except BaseException:
                with contextlib.suppress(AgentcellError):
                    await self._sandboxes.kill(sandbox_id)
                raise
            await self._forget(paused)
            log.info("sandbox %s resumed", sandbox_id)
            return sandbox

    async def kill(self, sandbox_id: str) -> None:
        """End a live sandbox, or delete a paused one with its snapshot. Raises NotFound."""
        async with self._lock(sandbox_id):
            paused = self.paused(sandbox_id)
            if paused is None:
                self._timeout_pause_failures.pop(sandbox_id, None)
                await self._sandboxes.kill(sandbox_id)
                return
            await self._forget(paused)
            log.info("paused sandbox %s killed", sandbox_id)

    async def expire_once(self, now: float) -> list[str]:
        """Delete every paused sandbox kept past its retention. Returns their ids."""
        expired = [p.sandbox.id for p in list(self._paused.values()) if p.record.keep_until <= now]
        for sandbox_id in expired:
            try:
                async with self._lock(sandbox_id):
                    if (paused := self._paused.get(sandbox_id)) is not None:
                        await self._forget(paused)
                log.info("paused sandbox %s deleted: kept past its retention", sandbox_id)
            except Exception:
                log.exception("paused sandbox %s: deletion after its retention failed", sandbox_id)
        return expired

    # -- internals -------------------------------------------------------------------------------

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        """The lock a pause, resume or kill of this sandbox runs under: a snapshot of it
        (scheduler/sandbox_snapshots.py) holds it too, so that none of them interleaves with one."""
        return self._lock(sandbox_id)

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        lock = self._locks.get(sandbox_id)
        if lock is None:
            lock = self._locks[sandbox_id] = asyncio.Lock()
        return lock

    async def _pause(self, sandbox: Sandbox) -> PausedSandbox:
        """Marked as a save in progress (`WorkspaceKeeper.saving`) until the paused sandbox's
        record is written: a server killed before that leaves the mark, and its next start deletes
        the snapshot (the sandbox ended with the server) instead of keeping unreachable objects."""
        await self._check_quota(sandbox.tenant)
        async with self._keeper.saving(_workspace(sandbox), PAUSE_SAVE):
            return await self._pause_marked(sandbox)

    async def _pause_marked(self, sandbox: Sandbox) -> PausedSandbox:
        path = storage_path(sandbox.tenant, sandbox.id)
        sandbox.pausing = True  # API file changes beginning from now on fail: the save may miss them
        frozen = False
        try:
            async with sandbox.file_changes.held():  # those in flight finish before the save lists the files
                frozen = await self._driver.freeze(sandbox.id)  # its files hold still until it stops
                info, record = await self._save(sandbox, path)
        except BaseException:  # the snapshot, its workspace row or the paused record failed
            sandbox.pausing = False  # the sandbox keeps running
            if frozen:
                await self._driver.thaw(sandbox.id)
            raise
        paused = self._paused[sandbox.id] = _from_record(record)
        self._paused_order.add(paused.sandbox)
        with contextlib.suppress(NotFound):  # ended meanwhile by a door that takes no lock (MCP)
            await self._sandboxes.kill(sandbox.id)
        log.info("sandbox %s paused: %d files, %d bytes stored", sandbox.id, info.files, info.stored_bytes)
        return paused

    async def _save(self, sandbox: Sandbox, path: str) -> tuple[SnapshotInfo, PausedSandboxRecord]:
        """The snapshot of the sandbox's home, then its records (`WorkspaceKeeper.put_held_record`)."""
        info = await save_home(self._driver, self._snapshots, sandbox.id, path)
        now = self._clock.now()
        record = PausedSandboxRecord(
            id=sandbox.id,
            tenant=sandbox.tenant,
            request_json=sandbox.request.model_dump_json(),
            storage_path=path,
            created_at=sandbox.created_at,
            paused_at=now,
            keep_until=now + self._retention_s,
            labels_json=json.dumps(self.labeller(sandbox) if self.labeller is not None else {}),
        )
        # (written after its snapshot, never one without; a failure lets go of its files: it runs on)
        put_paused = partial(self._store.put_paused_sandbox, record)
        await self._keeper.put_held_record(
            _workspace(sandbox, path), info, record.id, "paused sandbox", put_paused
        )
        return info, record

    async def _restore(self, sandbox: Sandbox, path: str) -> None:
        try:
            restored = await restore_home(self._driver, self._snapshots, sandbox.id, path)
        except WorkspaceCorrupt:
            raise
        except Unavailable as exc:  # nothing wrong with the files: they are there for a later try
            raise Unavailable(
                f"sandbox {sandbox.id} cannot be resumed now: {exc.message}; it stays paused, retry later",
                retry_after_s=STORE_RETRY_AFTER_S,
            ) from exc
        except AgentcellError as exc:
            raise WorkspaceCorrupt(
                f"sandbox {sandbox.id}: its files could not be restored: {exc.message}"
            ) from exc
        if restored is None:
            raise WorkspaceCorrupt(
                f"sandbox {sandbox.id}: its paused files ({path}) are missing from object storage; kill it"
            )

    async def _forget(self, paused: PausedSandbox) -> None:
        """Delete the snapshot, then the records (a crash in between leaves a record whose resume
        fails and whose kill finishes the job)."""
        path = paused.record.storage_path
        await self._snapshots.delete_all(path)
        await self._store.delete_workspace(path)
        await self._store.delete_paused_sandbox(paused.sandbox.id)
        self._keeper.unclaim(paused.workspace, paused.sandbox.id)
        if self._paused.pop(paused.sandbox.id, None) is not None:
            self._paused_order.discard(paused.sandbox)

    async def _check_quota(self, tenant: str) -> None:
        if over := await self._keeper.over_quota(tenant):
            used, quota = over
            raise QuotaExceeded(
                f"tenant {tenant} stores {used} bytes of workspaces and paused sandboxes, at its quota "
                f"of {quota}, so this sandbox cannot be paused; kill paused sandboxes or delete "
                "workspaces it no longer needs, or raise the quota"
            )


def _workspace(sandbox: Sandbox, path: str | None = None) -> Workspace:
    """Where a sandbox's paused files are stored (`path`, by default where a pause puts them), as a
    workspace of the pseudo-function."""
    path = path or storage_path(sandbox.tenant, sandbox.id)
    disk_bytes = sandbox.request.disk_mb << 20
    return Workspace(path, SANDBOX_HOME, sandbox.tenant, SANDBOXES_SEGMENT, sandbox.id, disk_bytes)


def _as_owner(sandbox: Sandbox) -> contextlib.AbstractContextManager[None]:
    """The sandbox's own tenant for what runs inside (the server's background work has none)."""
    principal = current_or_none()
    if principal is not None and principal.tenant == sandbox.tenant:
        return contextlib.nullcontext()
    return acting_as(Principal(sandbox.tenant, "agentcell-server", frozenset()))


def _from_record(record: PausedSandboxRecord) -> PausedSandbox:
    request = SandboxCreate.model_validate_json(record.request_json)
    sandbox = Sandbox(
        record.id, request, created_at=record.created_at, expires_at=record.keep_until, state="paused"
    )
    sandbox.tenant = record.tenant
    labels = json.loads(record.labels_json)
    if not isinstance(labels, dict):
        raise ValueError("labels are not an object")
    return PausedSandbox(sandbox, record, {str(k): str(v) for k, v in labels.items()})


async def save_home(driver: SandboxDriver, snapshots: Snapshots, sandbox_id: str, path: str) -> SnapshotInfo:
    """Snapshot a running sandbox's /home/user under `path`, one kept (a pause's and a sandbox
    snapshot's save; the caller freezes the sandbox around it)."""
    files = driver.files(sandbox_id)
    return await _with_home(files, lambda fd: snapshots.persist(path, fd, (WRITE_TEMPS,), keep=1))


async def restore_home(
    driver: SandboxDriver, snapshots: Snapshots, sandbox_id: str, path: str
) -> SnapshotInfo | None:
    """Replace a new sandbox's /home/user with the snapshot under `path` (None: there is none)."""
    files = driver.files(sandbox_id)
    return await _with_home(files, lambda fd: snapshots.restore(path, fd, owner=files.owner))


async def _with_home(files: SandboxFiles, work: Callable[[int], Awaitable[T]]) -> T:
    fd = await files.open_dir(SANDBOX_HOME)
    try:
        return await work(fd)
    finally:
        os.close(fd)
