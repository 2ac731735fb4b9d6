"""Scheduler: functions, sessions and instances on this node — placement, warm pools, scale from
zero and out, reaping, restart recovery.

The warm path (`route` for a bound session) is dictionary lookups and counters: no database, no
thread pool, no await. Everything slow (booting instances, hooks, persistence) runs as tasks in
the one TaskGroup that `run()` owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentcell.errors import (
    AgentcellError,
    Conflict,
    Internal,
    InvalidArgument,
    NotFound,
    QuotaExceeded,
    Unavailable,
)
from agentcell.protocol.functions import FunctionConfig
from agentcell.protocol.sessions import EndReason, SessionCreate, SessionInfo, SessionState, SessionUpdate
from agentcell.server.auth.names import DEFAULT_TENANT, split
from agentcell.server.auth.quotas import QuotaGuard, unlimited
from agentcell.server.clock import Clock
from agentcell.server.meta.records import FunctionRecord, InstanceRecord, SessionRecord, UsageRecord
from agentcell.server.meta.store import MetaStore
from agentcell.server.observability.logs import bind as bind_log_ids
from agentcell.server.observability.telemetry import NullTelemetry, Telemetry
from agentcell.server.sandbox.driver import ResourceUsage, SandboxDriver
from agentcell.server.scheduler.code import CodeBudget, install_code, remove_code, stale_code, unpack_staged
from agentcell.server.scheduler.functions import FunctionState, FunctionVersion
from agentcell.server.scheduler.instances import Instance, InstanceFailed, new_instance_id
from agentcell.server.scheduler.lifecycle import InstanceManager
from agentcell.server.scheduler.metering import (
    LiveUsage,
    Metered,
    Resources,
    UsageLedger,
    cpu_since,
    instance_rows,
    taking_turns,
)
from agentcell.server.scheduler.node_capacity import NodeCapacity, NodeFull
from agentcell.server.scheduler.placement import find_room, free_instance, idle_instances, needs_instance
from agentcell.server.scheduler.session_workspaces import SessionWorkspaces
from agentcell.server.scheduler.sessions import SESSION_KEY, Session, SessionEnded, new_session_id
from agentcell.server.scheduler.workspaces import STORE_RETRY_AFTER_S, WorkspaceKeeper, save_retry_delay_s
from agentcell.server.storage.snapshots import SnapshotInfo
from agentcell.server.templates.service import TemplateService

log = logging.getLogger(__name__)

UNNAMED_PREFIX = "mcp-unnamed-"


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    pids_max: int = 512
    stop_grace_s: float = 2.0
    max_waiting: int = 64
    wait_timeout_s: float = 10.0
    start_concurrency: int = 8
    usage_interval_s: float = 60.0
    final_save_attempts: int = 10
    """how often the reaper tries an expired session's last snapshot before it gives up"""
    final_save_retry_s: float = 30.0
    """the wait after its first failure; it doubles after each (`save_retry_delay_s`)"""


@dataclass(slots=True, eq=False)
class Lease:
    """One request's hold on an instance (and its session); `Scheduler.release` gives it back."""

    function: FunctionState
    instance: Instance
    session: Session | None
    issued_key: str | None = None


class Scheduler:
    def __init__(
        self,
        driver: SandboxDriver,
        store: MetaStore,
        clock: Clock,
        code_root: Path,
        limits: SchedulerLimits,
        workspaces: WorkspaceKeeper,
        templates: TemplateService | None = None,
        telemetry: Telemetry | None = None,
        quotas: QuotaGuard | None = None,
        ledger: UsageLedger | None = None,
        capacity: NodeCapacity | None = None,
    ) -> None:
        """`ledger`: the one the sandbox service writes too (a usage read sees both's queued rows).
        `capacity`: the node's, which the sandbox service shares (unlimited without it)."""
        self._store = store
        self._capacity = capacity or NodeCapacity()
        self._telemetry = telemetry or NullTelemetry()
        self._keeper = workspaces
        self._quotas = quotas or unlimited()
        self._clock = clock
        self._code_root = code_root
        self._limits = limits
        self._manager = InstanceManager(
            driver,
            clock,
            pids_max=limits.pids_max,
            stop_grace_s=limits.stop_grace_s,
            templates=templates,
            telemetry=self._telemetry,
        )
        self._workspaces = SessionWorkspaces(workspaces, self._manager, clock, self._telemetry)
        self._functions: dict[str, FunctionState] = {}
        self._sessions: dict[str, Session] = {}
        self._deploying: list[tuple[str, str]] = []
        self._unloadable: dict[str, int] = {}
        """functions whose latest stored config no longer validates (left out at restore), with
        that version's number: a redeploy under the name numbers its version after it"""
        """(function, template) of each deploy in progress: its template is needed already"""
        self._deleting: set[str] = set()
        self._registering = asyncio.Lock()
        """numbers a deploy's version and moves its code into place (one deploy at a time)"""
        """functions whose delete is ending their sessions: their name is not free yet"""
        self._start_slots = asyncio.Semaphore(limits.start_concurrency)
        self._tasks: asyncio.TaskGroup | None = None
        self._accepting = False
        self._warm_wanted = asyncio.Event()
        self._ledger = ledger or UsageLedger(store)
        self._metered_at = clock.now()

    # -- background --------------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        if self._tasks is None:
            work.close()
            raise Unavailable("the server is starting or shutting down; retry in a moment", retry_after_s=1)
        return self._tasks.create_task(self._logged(work, name), name=name)

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await work
        except Exception:
            log.exception("%s failed", name)

    async def run(self, tick_s: float, started: asyncio.Event | None = None) -> None:
        """Restore state, then reap, fill warm pools and flush session activity until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            await self.restore()
            self._accepting = True
            if started is not None:
                started.set()
            tasks.create_task(self._fill_loop(), name="warm pools")
            while True:
                await asyncio.sleep(tick_s)
                await self.reap_once(self._clock.now())
                await self.flush_once()
                self.sync_once(self._clock.now())
                if self._clock.now() - self._metered_at >= self._limits.usage_interval_s:
                    await self.meter_once(self._clock.now())

    async def _fill_loop(self) -> None:
        while True:
            await self._warm_wanted.wait()
            self._warm_wanted.clear()
            self.fill_once()

    # -- functions ---------------------------------------------------------------------------------

    async def deploy(
        self, name: str, config: FunctionConfig, archive: Path, budget: CodeBudget | None = None
    ) -> FunctionState:
        """Unpack `archive` (within the tenant's code `budget`, FunctionQuota) as the function's
        next version."""
        if name in self._deleting:  # (its instances still run its code; its records go at the end)
            raise Conflict(
                f"function {_shown(name)!r} is being deleted (its sessions are ending); deploy it "
                "again once the delete has finished"
            )
        self._manager.check_template(config.template)
        deploying = (name, config.template)
        self._deploying.append(deploying)  # from the check on: the template must not go meanwhile
        try:
            return await self._deploy(name, config, archive, budget)
        finally:
            self._deploying.remove(deploying)

    async def _deploy(
        self, name: str, config: FunctionConfig, archive: Path, budget: CodeBudget | None
    ) -> FunctionState:
        try:
            staging = await asyncio.to_thread(unpack_staged, archive, self._code_root / name, budget)
        except BaseException:
            if name not in self._functions and [d for d, _ in self._deploying].count(name) == 1:
                with contextlib.suppress(OSError):  # a first deploy that failed leaves no directory
                    os.rmdir(self._code_root / name)
            raise
        try:
            async with self._registering:  # concurrent deploys of one function: a number each
                return await self._register(name, config, staging)
        finally:
            if staging.exists():
                await asyncio.to_thread(remove_code, [staging])

    async def _register(self, name: str, config: FunctionConfig, staging: Path) -> FunctionState:
        current = self._functions.get(name)
        number = (current.latest.version if current else self._unloadable.pop(name, 0)) + 1
        now = self._clock.now()
        code_dir = self._code_root / name / f"v{number}"
        await asyncio.to_thread(install_code, staging, code_dir)
        version = FunctionVersion(name, number, config, str(code_dir), now)
        await self._store.put_function(version.record(now))
        if current is None:
            current = FunctionState(latest=version, created_at=now, versions={number: version})
            self._functions[name] = current
        else:
            current.add_version(version)
            self._retire_old_warm(current)
            self._drop_unused_versions(current)
        self._warm_wanted.set()
        log.info("function %s: version %d deployed", name, number)
        return current

    def needs_template(self, name: str) -> str | None:
        """TemplateDependent: the functions (of every tenant) that start instances from template
        `name`. Only the latest version starts new ones; the older versions' running instances
        hold the template as its users until they stop."""
        deployed = {fn.name for fn in self._functions.values() if fn.config.template == name}
        deployed |= {fn for fn, template in self._deploying if template == name}
        if not deployed:
            return None
        return (
            f"used by deployed function(s) {_listed(sorted(deployed))} (delete them, or redeploy them "
            "with another template, first)"
        )

    def _drop_unused_versions(self, fn: FunctionState) -> None:
        """Forget older versions no instance runs any more, with their code (while shutting down
        or deleting the function, the next start or the delete does it)."""
        if self._accepting and not fn.deleted:
            code, numbers = fn.drop_unused()
            if code or numbers:
                self._spawn(self._remove_versions(fn, code, numbers), f"remove old versions of {fn.name}")

    async def _remove_versions(self, fn: FunctionState, code: list[str], numbers: list[int]) -> None:
        if numbers and self._functions.get(fn.name) is fn:  # (not a function deleted meanwhile)
            await self._store.delete_function_versions(fn.name, numbers)
        if code and self._functions.get(fn.name) is fn:
            await asyncio.to_thread(remove_code, code)

    def _retire_old_warm(self, fn: FunctionState) -> None:
        for instance in [i for i in fn.warm if i.version != fn.latest.version]:
            fn.warm.remove(instance)
            self._spawn(self._stop_instance(fn, instance), f"retire {instance.id}")

    def function(self, name: str) -> FunctionState:
        fn = self._functions.get(name)
        if fn is None:
            raise NotFound(f"function {_shown(name)!r} not found; deploy it first")
        return fn

    def functions(self) -> list[FunctionState]:
        return sorted(self._functions.values(), key=lambda f: f.name)

    async def delete_function(self, name: str) -> None:
        """End every live session as `delete_session` does (pre-stop hook, last snapshot,
        metering; reason `function_deleted`), stop the instances, then forget the function.
        It takes no new requests from the start (they get NotFound). When a session's last
        snapshot cannot be written, that session is kept and so is the function (raises why)."""
        fn = self.function(name)
        if any(deploying == name for deploying, _ in self._deploying):
            raise Conflict(f"function {_shown(name)!r} is being deployed; delete it once that has finished")
        self._deleting.add(name)
        try:
            await self._delete_function(name, fn)
        finally:
            self._deleting.discard(name)

    async def _delete_function(self, name: str, fn: FunctionState) -> None:
        fn.deleted = True
        del self._functions[name]
        sessions = list(fn.sessions.values())
        ends = [self._end_session(s, "function_deleted", fn=fn) for s in sessions]
        outcomes = await asyncio.gather(*ends, return_exceptions=True)
        if kept := [s for s in sessions if not s.has_ended]:
            fn.deleted = False
            self._functions.setdefault(name, fn)
            failure = next(o for s, o in zip(sessions, outcomes, strict=True) if s in kept and o is not None)
            raise _not_ended(f"function {_shown(name)} was not deleted: {len(kept)} session(s) kept", failure)
        if errors := [o for o in outcomes if isinstance(o, BaseException)]:
            raise errors[0]
        self._telemetry.function_deleted(name)
        await asyncio.gather(*(self._stop_instance(fn, i) for i in list(fn.instances.values())))
        await self._store.delete_function(name)
        await asyncio.to_thread(remove_code, [self._code_root / name])  # any depth

    # -- the request path ----------------------------------------------------------------------------

    async def route(self, name: str, key: str | None) -> Lease:
        """Find (or make) the instance for one request. `key` is the request's session key."""
        fn = self.function(name)
        self._require_accepting()
        if fn.config.affinity.kind == "none":
            return await self._route_stateless(fn)
        issued = None
        session = fn.sessions.get(key) if key is not None else None
        while session is not None and session.closing is not None and session.is_closing:
            await asyncio.wait([session.closing])  # ending: it stays only if its last save fails
            session = fn.sessions.get(session.key)
        if session is None:
            if fn.config.affinity.kind == "mcp":
                raise NotFound(f"MCP session {key!r} not found or expired; initialize a new one")
            if key is None:
                key = issued = new_session_id()
            session = await self._open_session(fn, key, SessionCreate(), session_id=issued)
        elif not session.bound.done():
            await self._wait_bound(session)
        return self._lease(fn, session, issued)

    def _lease(self, fn: FunctionState, session: Session, issued: str | None = None) -> Lease:
        instance = fn.instances.get(session.instance_id or "")
        if instance is None or not instance.is_ready:
            raise Unavailable(f"session {session.key}'s instance is not available; retry", retry_after_s=1)
        lease = Lease(fn, instance, session, issued)
        self.acquire(lease)
        return lease

    async def route_stateless(self, name: str) -> Lease:
        """A request that belongs to no session (MCP's modern era): any instance with room."""
        fn = self.function(name)
        self._require_accepting()
        return await self._route_stateless(fn)

    async def route_new_mcp_session(self, name: str) -> Lease:
        """An MCP request without a session id (`initialize`, a legacy SSE stream): a session under
        a placeholder key, until the server names it (`name_mcp_session`) or the request ends
        without one (`release_unnamed`)."""
        fn = self.function(name)
        self._require_accepting()
        placeholder = UNNAMED_PREFIX + secrets.token_hex(12)
        session = await self._open_session(fn, placeholder, SessionCreate(), None, unnamed=True)
        return self._lease(fn, session)

    def name_mcp_session(self, lease: Lease, key: str) -> None:
        """The instance named the session (`Mcp-Session-Id`, or an SSE endpoint): bind the key."""
        session, fn = lease.session, lease.function
        if session is None or not session.unnamed or session.has_ended:
            return
        if not SESSION_KEY.fullmatch(key) or key in fn.sessions:
            log.warning(
                "function %s: MCP session id %r cannot be bound; requests will not find it", fn.name, key
            )
            return
        del fn.sessions[session.key]
        session.key, session.unnamed, session.dirty = key, False, True
        fn.sessions[key] = session

    def end_mcp_session(self, lease: Lease) -> None:
        """The client ended the session (DELETE, a closed legacy SSE stream) or the instance no
        longer knows it (404)."""
        if lease.session is not None and not lease.session.has_ended:
            self._spawn(self._end_session(lease.session, "deleted"), f"end {lease.session.id}")

    def release_unnamed(self, lease: Lease) -> None:
        """After an MCP request without a session id: a session the instance never named was not
        a session at all; its instance goes back to the pool untouched (nothing stateful happened
        there). So does an instance that served a request of no session (the modern era: it may
        have been started for it, and a session may want it next)."""
        session, fn = lease.session, lease.function
        if session is None:
            self._give_back(fn, lease.instance)
            return
        if not session.unnamed or session.has_ended or session.in_flight:
            return
        session.end("deleted")
        self._quotas.release(split(fn.name)[0], "session")
        fn.sessions.pop(session.key, None)
        self._sessions.pop(session.id, None)
        lease.instance.sessions.discard(session.id)
        self._give_back(fn, lease.instance)
        self._spawn(self._store.put_session(session.record()), f"end {session.id}")

    def _give_back(self, fn: FunctionState, instance: Instance) -> None:
        if self._is_spare(fn, instance):
            fn.warm.append(instance)
        fn.notify_capacity()

    def route_warm(self, name: str, key: str | None) -> Lease | None:
        """The warm path without awaiting: a lease when `key`'s session is bound to a ready
        instance, None when `route` would have to create, wait or fail (let it say why)."""
        fn = self._functions.get(name)
        if fn is None or key is None or not self._accepting or fn.config.affinity.kind == "none":
            return None
        session = fn.sessions.get(key)
        if session is None or not session.bound.done() or session.state == "ended" or session.is_closing:
            return None
        instance = fn.instances.get(session.instance_id or "")
        if instance is None or not instance.is_ready:
            return None
        lease = Lease(fn, instance, session)
        self.acquire(lease)
        return lease

    def route_free(self, name: str) -> Lease | None:
        """`affinity: none` without awaiting: a lease on the least busy ready instance with room,
        None when `route` would have to scale out, queue or fail (or others already wait)."""
        fn = self._functions.get(name)
        if fn is None or fn.deleted or fn.waiting or not self._accepting or fn.config.affinity.kind != "none":
            return None
        instance = free_instance(fn)
        return None if instance is None else self._lease_stateless(fn, instance)

    def _lease_stateless(self, fn: FunctionState, instance: Instance) -> Lease:
        now = self._clock.now()
        instance.begin(now)
        instance.stateless.begin(now)  # its sessions' idle time meanwhile is lent to it
        return Lease(fn, instance, None)

    def still_warm(self, lease: Lease, key: str) -> bool:
        """Whether `route_warm(name, key)` would lease what `lease` holds again: its function,
        session and instance, all still serving (whether the function was redeployed since is
        the caller's to tell: its config object changes)."""
        fn, session, instance = lease.function, lease.session, lease.instance
        return (
            self._accepting
            and self._functions.get(fn.name) is fn
            and session is not None
            and fn.sessions.get(key) is session
            and session.state != "ended"
            and not session.is_closing
            and session.instance_id == instance.id
            and fn.instances.get(instance.id) is instance
            and instance.is_ready
        )

    def acquire(self, lease: Lease) -> None:
        """A request starts on the lease's session and instance (`release` ends it)."""
        now = self._clock.now()
        if lease.session is not None:
            lease.session.acquire(now)
        lease.instance.begin(now)

    def release(self, lease: Lease) -> None:
        now = self._clock.now()
        lease.instance.end(now)
        if lease.session is None:
            lease.instance.stateless.end(now)
        elif lease.session.state != "ended":
            lease.session.release(now)
        if lease.function.waiting:
            lease.function.notify_capacity()

    async def connect(self, lease: Lease) -> socket.socket:
        """A connected socket to the lease's instance (its server, on $PORT)."""
        return await self._manager.connect(lease.instance)

    def instance_unreachable(self, lease: Lease, reason: str) -> None:
        """The gateway could not reach an instance that should be serving: treat it as failed."""
        instance = lease.instance
        if instance.is_live:
            log.warning("instance %s unreachable (%s): failing it", instance.id, reason)
            self._spawn(self._fail_instance(lease.function, instance, reason), f"fail {instance.id}")

    def _require_accepting(self) -> None:
        if not self._accepting:
            raise Unavailable(
                "the server is not accepting requests (starting or shutting down)", retry_after_s=1
            )

    async def _wait_bound(self, session: Session) -> None:
        """Wait until `session` is bound. A request cancelled here (its client left) while the
        session still waits for room takes it out of the queue when no other request waits for
        it; once an instance is starting for it, the session outlives the request."""
        session.waiters += 1
        try:
            await asyncio.shield(session.bound)
        except SessionEnded:
            raise Unavailable(
                f"session {session.key} ended ({session.end_reason}) while starting; retry", retry_after_s=1
            ) from None
        except asyncio.CancelledError:
            if session.waiters == 1 and session.is_queued:
                self._abandon(session)
            raise
        finally:
            session.waiters -= 1

    async def _route_stateless(self, fn: FunctionState) -> Lease:
        """The least busy ready instance with room; else scale out (or wait) within one deadline.
        A request whose own new instance fails to start gets that failure, not another launch."""
        deadline = self._wait_deadline()
        launched: Instance | None = None
        while True:
            _require_live(fn)
            instance = free_instance(fn)
            if instance is not None:
                return self._lease_stateless(fn, instance)
            if launched is not None and launched.failure is not None:
                raise Unavailable(
                    f"could not start an instance of {_shown(fn.name)}: {launched.failure}", retry_after_s=1
                )
            if needs_instance(fn):
                launched = self._launch_or_queue(fn) or launched
            await self._wait_capacity(fn, deadline)

    # -- sessions ------------------------------------------------------------------------------------

    async def create_session(self, name: str, request: SessionCreate) -> Session:
        """Pre-warm: bind an instance now, before the session's first request."""
        fn = self.function(name)
        self._require_accepting()
        if fn.config.affinity.kind == "none":
            raise InvalidArgument(f"function {_shown(name)} has affinity 'none': it has no sessions")
        session_id = new_session_id()
        key = request.key or session_id
        if key in fn.sessions:
            raise Conflict(
                f"session key {key!r} is already live on {_shown(name)}; renew it or pick another key"
            )
        return await self._open_session(fn, key, request, session_id=session_id)

    async def _open_session(
        self,
        fn: FunctionState,
        key: str,
        request: SessionCreate,
        session_id: str | None,
        *,
        unnamed: bool = False,
    ) -> Session:
        config = fn.config
        if config.disable_session_id_reuse and key in fn.ended_keys:
            raise Conflict(
                f"session {key!r} has ended and function {_shown(fn.name)} does not reuse session ids; "
                "start a new session without a key"
            )
        now = self._clock.now()
        session = Session(
            id=session_id or new_session_id(),
            function=fn.name,
            key=key,
            version=fn.latest.version,
            created_at=now,
            last_active_at=now,
            ttl_s=request.ttl_s or config.session_ttl_s,
            idle_timeout_s=request.idle_timeout_s or config.idle_timeout_s,
            metadata=dict(request.metadata),
            unnamed=unnamed,
        )
        session.meter.since = now
        tenant = split(fn.name)[0]
        self._quotas.hold(tenant, "session")
        try:
            session.workspace = await self._workspaces.claim(fn, session, request.workspace)
        except BaseException:
            self._quotas.release(tenant, "session")
            raise
        self._spawn(self._bind(fn, session), f"bind {session.id}")
        fn.sessions[key] = session
        self._sessions[session.id] = session
        await self._wait_bound(session)
        return session

    async def _bind(self, fn: FunctionState, session: Session) -> None:
        """Place a pending session and wait for its instance; whoever waits on `session.bound`
        learns the outcome. A task of its own, so that a client giving up mid cold start (a
        disconnect, a timeout) does not throw the session and its instance away."""
        bind_log_ids(session=session.id)  # this task's log lines, and its children's
        self._telemetry.begin_session(session.bound, session.id, fn.name)
        claim_started = self._telemetry.now()
        try:
            instance = await self._place(fn, session)
            self._telemetry.phase("claim", claim_started, instance.id)
            await self._meter(fn, instance, joining=session)  # its time as a spare, or the old split, ends
            await asyncio.shield(instance.ready)
        except SessionEnded:
            return  # deleted or expired while waiting for room
        except InstanceFailed as exc:
            error = Unavailable(f"could not start an instance of {_shown(fn.name)}: {exc}", retry_after_s=1)
            await self._end_session(session, "instance_failed", error)
            return
        except AgentcellError as exc:  # no room: the wait queue is full or the wait timed out
            await self._end_session(session, "instance_failed", exc)
            return
        except asyncio.CancelledError:
            session.end("shutdown")  # wake the requests waiting for it
            raise
        if session.state != "pending":
            return  # it ended while its instance started
        if session.workspace is not None and not await self._attach(fn, instance, session):
            return
        if session.has_ended:
            return  # deleted while its workspace came back
        session.move("idle")
        record, session.dirty = session.record(), False
        try:
            await self._store.put_session(record)  # persisted before use: a restart finds it
        except Exception as exc:
            log.exception("session %s could not be recorded", session.id)
            await self._end_session(
                session, "instance_failed", Internal(f"could not record the session: {exc}")
            )
            return
        if not session.bound.done():  # (it may have ended meanwhile)
            session.bound.set_result(None)

    async def _attach(self, fn: FunctionState, instance: Instance, session: Session) -> bool:
        """Bring the session's workspace into its instance; on failure the session ends with
        `restore_failed` and its waiting requests get the reason."""
        config = fn.versions.get(instance.version, fn.latest).config
        error = await self._workspaces.attach(config, instance, session)
        if error is not None:
            await self._end_session(session, "restore_failed", error)
        return error is None

    async def _place(self, fn: FunctionState, session: Session) -> Instance:
        """Reserve a slot for `session` on an instance with room, a warm one, or a new one."""
        deadline = self._wait_deadline()
        while True:
            if session.state == "ended":
                raise SessionEnded(session)
            _require_live(fn)
            instance = find_room(fn)
            if instance is None and len(fn.live_instances()) < fn.config.max_instances:
                instance = self._launch(fn, fn.latest)
            if instance is not None:
                self._telemetry.session_started(warm=instance.is_ready)
                session.meter.take(self._clock.now())  # its wait for room, with no instance, is not billed
                session.meter.lend_idle_to(instance.stateless, self._clock.now())
                instance.sessions.add(session.id)
                session.instance_id = instance.id
                self._warm_wanted.set()
                return instance
            await self._wait_capacity(fn, deadline)

    def _wait_deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._limits.wait_timeout_s

    async def _wait_capacity(self, fn: FunctionState, deadline: float) -> None:
        """Wait for a change in `fn`'s capacity (the caller re-checks), in a bounded queue, until
        `deadline` (the whole wait of one request, however often it is woken)."""
        if fn.waiting >= self._limits.max_waiting:
            raise QuotaExceeded(
                f"function {_shown(fn.name)} is at max_instances ({fn.config.max_instances}) and "
                f"{fn.waiting} requests already wait; retry later",
                retry_after_s=1,
            )
        fn.waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await fn.capacity_changed.wait()
        except TimeoutError:
            raise Unavailable(
                f"no instance of {_shown(fn.name)} became free within {self._limits.wait_timeout_s:g} s",
                retry_after_s=2,
            ) from None
        finally:
            fn.waiting -= 1

    def session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(f"session {session_id!r} not found or ended")
        return session

    async def session_info(self, session_id: str) -> SessionInfo:
        """Live sessions from memory; ended ones from the store (with their end reason)."""
        if (live := self._sessions.get(session_id)) is not None:
            return live.info()
        record = await self._store.get_session(session_id)
        if record is None:
            raise NotFound(f"session {session_id!r} not found")
        return _ended_info(record)

    def sessions(
        self, name: str | None, state: SessionState | None, metadata: dict[str, str]
    ) -> list[Session]:
        if name is not None:
            self.function(name)
        found = [
            s
            for s in self._sessions.values()
            if (name is None or s.function == name)
            and (state is None or s.state == state)
            and all(s.metadata.get(k) == v for k, v in metadata.items())
        ]
        return sorted(found, key=lambda s: s.created_at)

    async def update_session(self, session_id: str, update: SessionUpdate) -> Session:
        session = self.session(session_id)
        session.renew(self._clock.now(), update.ttl_s, update.idle_timeout_s)
        await self._store.put_session(session.record())
        session.dirty = False
        return session

    async def delete_session(self, session_id: str) -> None:
        """Pre-stop hook, last snapshot, then release the instance (destroyed if it was
        exclusive). When the snapshot cannot be written the session stays as it was (raises
        Unavailable: a later delete tries again)."""
        session = self.session(session_id)
        try:
            await self._end_session(session, "deleted")
        except Unavailable as exc:
            if session.has_ended:
                raise
            raise _not_ended(f"session {session_id} was not deleted", exc) from exc

    def _abandon(self, session: Session) -> None:
        """Every request waiting for a session still queued for room has gone: it ends now (no
        instance is started or bound for it) and its place in the queue is free at once."""
        if session.has_ended:
            return
        self._unregister(session, "deleted", None, self._functions.get(session.function))
        self._workspaces.unclaim(session)

    def _unregister(
        self, session: Session, reason: EndReason, error: AgentcellError | None, fn: FunctionState | None
    ) -> Instance | None:
        """End `session` in memory (its key and quota are free, its waiters told); returns the
        instance it holds, if any. A session still queued for room leaves the queue."""
        queued = session.is_queued
        self._workspaces.ending(session)
        session.end(reason, error)
        self._quotas.release(split(session.function)[0], "session")
        self._sessions.pop(session.id, None)
        log.info("session %s (%s) ended: %s", session.id, session.key, reason)
        if fn is None:
            return None
        if fn.sessions.get(session.key) is session:
            del fn.sessions[session.key]
        if queued:
            fn.notify_capacity()  # its placement wakes, sees it ended and leaves the queue
        return fn.instances.get(session.instance_id or "")

    async def _end_session(
        self,
        session: Session,
        reason: EndReason,
        error: AgentcellError | None = None,
        *,
        fn: FunctionState | None = None,
        save: bool = True,
    ) -> None:
        """End a session. A live one (idle or active, on a ready instance) first gets its pre-stop
        hook and last snapshot while it is still live; when that snapshot cannot be written this
        raises Unavailable and the session, its instance and its files stay
        as they were. `save=False`: end it without either (the reaper gave up on it).
        `error`: what requests still waiting for the session to bind get. `fn`: the session's
        function when it is no longer registered (being deleted)."""
        if session.is_closing:  # another end of it is under way
            await self._closed(session, saves=save and reason != "instance_failed")
        if session.state == "ended":
            return
        fn = fn or self._functions.get(session.function)
        instance = fn.instances.get(session.instance_id or "") if fn is not None else None
        closing: asyncio.Future[None] | None = None
        if save and fn is not None and instance is not None and _closes(session, instance, reason):
            closing = session.closing = asyncio.get_running_loop().create_future()
            try:
                await self._close(fn, instance, session, reason)
            except BaseException as exc:
                session.closing = None
                _settle(closing, exc)
                raise
        try:
            if not session.has_ended:  # (a placeholder MCP session may be dropped meanwhile)
                await self._finish(session, reason, error, fn, hook=save and closing is None)
        finally:
            if closing is not None:
                _settle(closing, None)

    async def _closed(self, session: Session, *, saves: bool) -> None:
        """Wait for the end of `session` under way. Its failure to save is this end's too, unless
        this one does not save (its instance failed, or the reaper gave up)."""
        assert session.closing is not None
        closing = session.closing
        await asyncio.wait([closing])
        failure = None if closing.cancelled() else closing.exception()
        if failure is not None and saves:
            raise failure

    async def _close(self, fn: FunctionState, instance: Instance, session: Session, reason: str) -> None:
        """What may keep a live session from ending: its pre-stop hook (which may flush the
        program's state into the workspace), then its last snapshot."""
        config = fn.versions.get(instance.version, fn.latest).config
        await self._pre_stop(config, instance, session, reason)
        await self._workspaces.final_save(config, instance, session)

    async def _finish(
        self,
        session: Session,
        reason: EndReason,
        error: AgentcellError | None,
        fn: FunctionState | None,
        *,
        hook: bool,
    ) -> None:
        was_bound = session.state != "pending"  # a key that never reached an instance stays free
        if fn is not None and fn.config.disable_session_id_reuse and was_bound:
            fn.ended_keys.add(session.key)
        instance = self._unregister(session, reason, error, fn)
        if was_bound:
            await self._store.put_session(session.record())
        try:
            if fn is not None and instance is not None:
                await self._meter(fn, instance, ending=session)
                await self._release_instance(fn, instance, session, reason, hook=hook)
        finally:
            self._workspaces.unclaim(session)

    async def _release_instance(
        self, fn: FunctionState, instance: Instance, session: Session, reason: str, *, hook: bool
    ) -> None:
        """After the session ended: its files leave the instance, which is destroyed if it was
        exclusive. `hook`: run the pre-stop hook first (an end that did not run it before)."""
        version = fn.versions.get(instance.version, fn.latest)
        if hook:
            await self._pre_stop(version.config, instance, session, reason)
        await self._workspaces.detach(instance, session)
        instance.sessions.discard(session.id)
        if version.config.sessions_per_instance == 1:
            await self._stop_instance(fn, instance)  # exclusive: never serves another session
        elif self._is_spare(fn, instance):
            fn.warm.append(instance)  # a shared instance with no session left is warm again
        fn.notify_capacity()

    async def _pre_stop(
        self, config: FunctionConfig, instance: Instance, session: Session, reason: str
    ) -> None:
        """The pre-stop hook of an ending session; its failure is logged, and the session ends."""
        hook = config.pre_stop
        if hook is None or not instance.is_ready or reason == "instance_failed":
            return
        env = {
            "AGENTCELL_SESSION_ID": session.id,
            "AGENTCELL_SESSION_KEY": session.key,
            "AGENTCELL_END_REASON": reason,
        }
        try:
            await self._manager.run_hook(instance, hook.cmd, hook.timeout_s, env, "pre_stop")
            log.info("session %s: pre_stop hook passed", session.id)
        except Exception as exc:
            log.warning("session %s: pre_stop hook failed: %s", session.id, exc)

    async def snapshot_session(self, session_id: str) -> SnapshotInfo:
        """Persist a live session's workspace now."""
        session = self.session(session_id)
        fn = self.function(session.function)
        instance = fn.instances.get(session.instance_id or "")
        config = fn.versions.get(instance.version if instance else session.version, fn.latest).config
        return await self._workspaces.snapshot(config, instance, session)

    def sync_once(self, now: float) -> int:
        """Start a snapshot of every live workspace whose sync interval passed. Returns how many."""
        due = [s for s in self._sessions.values() if self._sync_due(s, now)]
        for session in due:
            session.synced_at = now  # (also keeps the next tick from starting it again)
            self._spawn(self._sync(session), f"sync {session.id}")
        return len(due)

    def _sync_due(self, session: Session, now: float) -> bool:
        fn = self._functions.get(session.function)
        if fn is None or session.workspace is None:
            return False
        return self._workspaces.is_due(fn.versions.get(session.version, fn.latest).config, session, now)

    async def _sync(self, session: Session) -> None:
        try:
            await self.snapshot_session(session.id)
        except AgentcellError as exc:
            log.warning("session %s: periodic snapshot failed: %s", session.id, exc.message)

    @staticmethod
    def _is_spare(fn: FunctionState, instance: Instance) -> bool:
        return (
            instance.is_ready
            and not instance.sessions
            and instance.version == fn.latest.version
            and instance not in fn.warm
        )

    # -- instances -----------------------------------------------------------------------------------

    def _launch_or_queue(self, fn: FunctionState) -> Instance | None:
        """A new instance for a request of no session; None when the node is full but `fn` has
        instances whose requests end (the request waits for one of them, as at max_instances)."""
        try:
            return self._launch(fn, fn.latest)
        except NodeFull:
            if not fn.live_instances():
                raise
            return None

    def _launch(self, fn: FunctionState, version: FunctionVersion) -> Instance:
        """Start one more instance (QuotaExceeded when its tenant has no room for it, NodeFull
        when the node has none)."""
        self._hold_instance(fn, version, force=False)
        instance = Instance(
            new_instance_id(), fn.name, version.version, version.config.port, self._clock.now()
        )
        instance.last_used_at = instance.meter.since = instance.created_at
        fn.instances[instance.id] = instance
        self._spawn(self._boot(fn, version, instance), f"boot {instance.id}")
        return instance

    def _hold_instance(self, fn: FunctionState, version: FunctionVersion, *, force: bool) -> None:
        """Count one more instance against the node's capacity and its tenant's quotas; `force`:
        it runs already (re-adopted), never refused."""
        config = version.config
        if force:
            self._capacity.take_unchecked("instance")
        else:
            self._capacity.take("instance")
        try:
            self._quotas.hold(split(fn.name)[0], "instance", config.cpu, config.memory_mb, force=force)
        except BaseException:
            self._capacity.give("instance")
            raise

    def _drop_instance(self, fn: FunctionState, instance: Instance) -> None:
        """Forget an instance (once) and give its tenant and the node back its room."""
        if fn.instances.pop(instance.id, None) is None:
            return
        config = fn.versions.get(instance.version, fn.latest).config
        self._quotas.release(split(fn.name)[0], "instance", config.cpu, config.memory_mb)
        self._capacity.give("instance")
        self._drop_unused_versions(fn)

    async def _boot(self, fn: FunctionState, version: FunctionVersion, instance: Instance) -> None:
        bind_log_ids(instance=instance.id)
        try:
            async with self._start_slots:
                if instance.state != "starting":
                    return
                await self._capacity.make_room()  # idle pooled sandboxes give up its room
                await self._manager.boot(instance, version)
        except Exception as exc:
            log.warning("instance %s of %s failed to start: %s", instance.id, fn.name, exc)
            self._back_off_warm(fn)
            await self._forget_instance(fn, instance, "instance_failed")
            return
        fn.start_succeeded()
        await self._store.put_instance(
            InstanceRecord(instance.id, fn.name, instance.version, instance.state, instance.created_at)
        )
        fn.notify_capacity()
        self._spawn(self._watch(fn, instance), f"watch {instance.id}")

    async def _watch(self, fn: FunctionState, instance: Instance) -> None:
        await self._manager.server_exited(instance)
        if instance.is_live:
            await self._fail_instance(fn, instance, "its server exited")

    async def _fail_instance(self, fn: FunctionState, instance: Instance, reason: str) -> None:
        log.warning("instance %s of %s failed: %s", instance.id, fn.name, reason)
        self._back_off_warm(fn)
        instance.mark_failed(reason)
        await self._forget_instance(fn, instance, "instance_failed")
        await self._manager.stop(instance)

    async def _forget_instance(self, fn: FunctionState, instance: Instance, reason: EndReason) -> None:
        if instance in fn.warm:
            fn.warm.remove(instance)
        error = Unavailable(
            f"could not start an instance of {_shown(fn.name)}: {instance.failure or 'it stopped'}",
            retry_after_s=1,
        )
        for session in [s for s in self._sessions.values() if s.id in instance.sessions]:
            await self._end_session(session, reason, error)
        self._drop_instance(fn, instance)
        await self._store.delete_instance(instance.id)
        fn.notify_capacity()
        self._warm_wanted.set()

    async def _stop_idle(self, fn: FunctionState, instance: Instance, now: float) -> None:
        """Stop an instance the reaper found idle, unless a request or a session took it in the
        same turn of the loop, before this task started."""
        if instance in idle_instances(fn, now):
            await self._stop_instance(fn, instance)

    async def _stop_instance(self, fn: FunctionState, instance: Instance) -> None:
        if instance in fn.warm:
            fn.warm.remove(instance)
        if instance.state == "stopping":
            await instance.stopped.wait()  # someone else stops it: shutdown must not outrun that
            return
        measured = instance.is_ready
        if instance.is_live:
            instance.state = "stopping"  # from here on no request is routed to it
        try:
            await self._meter(fn, instance, measure=measured)
        finally:
            await self._manager.stop(instance)
        self._drop_instance(fn, instance)
        await self._store.delete_instance(instance.id)
        fn.notify_capacity()

    # -- metering ------------------------------------------------------------------------------------

    async def meter_once(self, now: float) -> int:
        """Write every live instance's usage since it was last metered (and stored workspaces'
        bytes) to the ledger. Returns how many rows were written."""
        self._metered_at = now
        async for fn, instance in taking_turns(self._ready_instances()):
            if instance.is_ready:  # (a stop, meanwhile, metered it last)
                await self._meter(fn, instance)
        self._ledger.add(await self._keeper.storage_usage(now))
        return await self._ledger.write()

    async def usage(
        self, tenant: str | None, since: float, until: float, others: Sequence[Metered] = ()
    ) -> list[UsageRecord]:
        """The usage rows of `tenant` (None: all) that started in [since, until), up to now:
        the ledger's, plus what live instances (and `others`: the sandbox service, on the same
        ledger) hold that the next `meter_once` would write. Meters nothing, writes nothing."""
        live = [await self.live_usage(), *[await other.live_usage() for other in others]]
        return await self._ledger.read(tenant, since, until, live)

    async def live_usage(self) -> LiveUsage:
        """The rows `meter_once` would write now, made when called, without taking a meter:
        CPU from each ready instance's cgroup counter read here, stored bytes read here."""
        counters: dict[str, ResourceUsage] = {}
        async for _, instance in taking_turns(self._ready_instances()):
            with contextlib.suppress(AgentcellError):  # gone meanwhile: no CPU, its time still counts
                counters[instance.id] = await self._manager.usage(instance)
        stored = await self._store.workspaces(None)

        def rows() -> list[UsageRecord]:
            made = [
                r for fn, i in self._ready_instances() for r in self._unmetered(fn, i, counters.get(i.id))
            ]
            return made + self._keeper.storage_since_metered(stored, self._clock.now())

        return rows

    def _ready_instances(self) -> list[tuple[FunctionState, Instance]]:
        return [(fn, i) for fn in list(self._functions.values()) for i in fn.instances.values() if i.is_ready]

    def _unmetered(
        self, fn: FunctionState, instance: Instance, used: ResourceUsage | None
    ) -> list[UsageRecord]:
        """The rows `_meter` would queue for a ready instance now, no meter taken; `used`: its
        cgroup's counters read a moment ago (None: unreadable, no CPU)."""
        cpu_s = cpu_since(used.cpu_ns, instance.cpu_ns_metered) if used else 0.0
        peak = used.memory_peak_bytes if used else 0
        sessions = self._sessions_on(instance)
        return self._instance_usage(fn, instance, sessions, cpu_s, peak, advance=False)

    async def _meter(
        self,
        fn: FunctionState,
        instance: Instance,
        ending: Session | None = None,
        *,
        joining: Session | None = None,
        measure: bool = False,
    ) -> None:
        """Queue the instance's usage since it was last metered, CPU read from its cgroup (when it
        is ready, or `measure`: it was until its stop began). `ending`: a session on its way out
        (no longer listed as live) whose last stretch is its own. `joining`: a session just placed
        on it, whose time starts now (what came before is the instance's, or its other sessions')."""
        cpu_s, peak = 0.0, 0
        if instance.is_ready or measure:
            try:
                used = await self._manager.usage(instance)
            except AgentcellError:
                pass  # gone meanwhile: its last CPU seconds are lost, its wall time is not
            else:
                cpu_s, instance.cpu_ns_metered = (used.cpu_ns - instance.cpu_ns_metered) / 1e9, used.cpu_ns
                peak = used.memory_peak_bytes
        sessions = [s for s in self._sessions_on(instance) if s is not joining]
        if ending is not None and ending.id in instance.sessions and ending not in sessions:
            sessions.append(ending)
        self._ledger.add(self._instance_usage(fn, instance, sessions, cpu_s, peak))

    def _sessions_on(self, instance: Instance) -> list[Session]:
        return [self._sessions[i] for i in instance.sessions if i in self._sessions]

    def _instance_usage(
        self,
        fn: FunctionState,
        instance: Instance,
        sessions: list[Session],
        cpu_s: float,
        peak: int = 0,
        *,
        advance: bool = True,
    ) -> list[UsageRecord]:
        config = fn.versions.get(instance.version, fn.latest).config
        resources = Resources(config.cpu, config.memory_mb << 20)
        tenant, name = split(fn.name)
        now = self._clock.now()
        return instance_rows(tenant, name, instance, sessions, resources, (cpu_s, peak), now, advance=advance)

    # -- periodic work -------------------------------------------------------------------------------

    def _back_off_warm(self, fn: FunctionState) -> None:
        """A function whose instances fail does not refill its warm pool in a loop (a command that
        exits at once cost ~100 starts a second): the next fill waits, 1 s doubling up to 60 s."""
        wait = fn.start_failed(self._clock.now())
        asyncio.get_running_loop().call_later(wait, self._warm_wanted.set)

    def fill_once(self) -> int:
        """Start instances until every function has min_warm spare ones (a function whose starts
        keep failing waits for its warm_retry_at). Returns how many started."""
        started = 0
        for fn in list(self._functions.values()):
            if self._clock.now() < fn.warm_retry_at:
                continue
            spare = (
                [i for i in fn.warm if i.is_live]
                if fn.config.affinity.kind != "none"
                else fn.live_instances()
            )
            room = fn.config.max_instances - len(fn.live_instances())
            for _ in range(max(0, min(fn.config.min_warm - len(spare), room))):
                try:
                    instance = self._launch(fn, fn.latest)
                except QuotaExceeded as exc:
                    log.info("function %s: no warm instance: %s", fn.name, exc.message)
                    break
                except NodeFull as exc:  # not retried at every change: the node may stay full
                    log.info("function %s: no warm instance: %s", fn.name, exc.message)
                    self._back_off_warm(fn)
                    break
                if fn.config.affinity.kind != "none":
                    fn.warm.append(instance)
                started += 1
        return started

    async def reap_once(self, now: float) -> list[tuple[str, str]]:
        """End expired sessions, then stop idle spare instances, each batch concurrently (a slow
        pre_stop hook delays no other). Returns (id, reason) pairs."""
        expired = [(s, r) for s in list(self._sessions.values()) if (r := s.expiry_reason(now)) is not None]
        await asyncio.gather(*(self._reap(self._expire(s, r, now), s.id) for s, r in expired))
        expired = [(s, r) for s, r in expired if s.has_ended]  # (one whose last save failed is kept)
        idle = [(fn, i) for fn in list(self._functions.values()) for i in idle_instances(fn, now)]
        await asyncio.gather(*(self._reap(self._stop_idle(fn, i, now), i.id) for fn, i in idle))
        idle = [(fn, i) for fn, i in idle if i.state == "gone"]  # (one taken meanwhile stays)
        reaped = [(s.id, str(r)) for s, r in expired] + [(i.id, "idle") for _, i in idle]
        self._telemetry.reaped_batch([str(r) for _, r in expired], instances_idle=len(idle))
        if reaped:
            self._warm_wanted.set()
        return reaped

    async def _expire(self, session: Session, reason: EndReason, now: float) -> None:
        """End an expired session. When its last snapshot fails, the session and its instance are
        kept and the reaper tries again later (backing off), `final_save_attempts` times in all;
        then it ends without it. Either way the workspace records why."""
        if session.expiry_reason(now) is None:
            return  # a request reached it after the reaper chose it (same turn of the loop): not idle now
        try:
            await self._end_session(session, reason)
            return
        except Unavailable as exc:
            if session.has_ended:
                raise
            failure = exc
        session.save_failures += 1
        attempts = self._limits.final_save_attempts
        if session.save_failures < attempts:
            delay = save_retry_delay_s(session.save_failures, self._limits.final_save_retry_s)
            session.end_retry_at = now + delay
            log.warning(
                "session %s (%s): kept, its last snapshot failed: %s", session.id, reason, failure.message
            )
            await self._workspaces.note_error(
                session,
                f"{failure.message}; the session ({reason}) and its instance are kept and the save is "
                f"tried again in {delay:g} s (attempt {session.save_failures} of {attempts})",
            )
            return
        log.error(
            "session %s (%s): ended without its last snapshot after %d attempts; changes since the "
            "previous snapshot are lost: %s",
            session.id,
            reason,
            attempts,
            failure.message,
        )
        await self._workspaces.note_error(
            session,
            f"{failure.message}; after {attempts} attempts the session ended ({reason}) without it: "
            "changes since the previous snapshot are lost",
        )
        await self._end_session(session, reason, save=False)

    @staticmethod
    async def _reap(work: Coroutine[Any, Any, None], what: str) -> None:
        """One item of a reaping pass: its failure is logged and the pass goes on."""
        try:
            await work
        except Exception:
            log.exception("reaping %s failed", what)

    async def flush_once(self) -> int:
        """Persist sessions whose activity changed since the last flush (for restart recovery)."""
        dirty = [s for s in self._sessions.values() if s.dirty and s.state != "pending"]
        if dirty:
            await self._store.put_sessions([s.record() for s in dirty])
            for session in dirty:
                session.dirty = False
        return len(dirty)

    # -- restart and shutdown ------------------------------------------------------------------------

    def _loaded(self, latest: FunctionRecord, records: list[FunctionRecord]) -> FunctionState | None:
        """A stored function as this server's validation reads it. A version whose config no
        longer validates (written by an older server that accepted it) is left out with an error
        in the log, so that one record cannot keep the server from starting; without its latest
        version the function is left out whole until it is redeployed."""
        versions = []
        for record in records:
            try:
                versions.append(FunctionVersion.from_record(record))
            except ValueError as exc:
                log.error(
                    "function %s version %d not loaded: its stored config: %s",
                    record.name,
                    record.version,
                    exc,
                )
        if not versions or versions[-1].version != latest.version:
            log.error(
                "function %s is not served: redeploy it (its latest config no longer validates)", latest.name
            )
            self._unloadable[latest.name] = latest.version
            return None
        return FunctionState(
            latest=versions[-1], created_at=versions[0].created_at, versions={v.version: v for v in versions}
        )

    async def restore(self) -> None:
        """Reload functions; re-adopt instances a crashed server left running, with their sessions.
        Sessions whose instance is gone end with `instance_failed`."""
        for latest in await self._store.latest_functions():
            fn = self._loaded(latest, await self._store.function_versions(latest.name))
            if fn is None:
                continue
            fn.ended_keys = (
                await self._store.ended_session_keys(fn.name) if fn.config.disable_session_id_reuse else set()
            )
            self._functions[fn.name] = fn
        for instance_record in await self._store.instances():
            await self._adopt(instance_record)
        for session_record in await self._store.live_sessions():
            if session_record.state in ("pending", "restoring"):
                await self._drop_unbound(session_record)
            else:
                self._restore_session(session_record)
        for fn in self._functions.values():
            await self._stop_maybe_used(fn)
            fn.warm = [i for i in fn.instances.values() if not i.sessions and i.version == fn.latest.version]
        for f in self._functions.values():
            if numbers := f.drop_unused()[1]:
                await self._store.delete_function_versions(f.name, numbers)
        kept = [
            v.code_dir
            for f in self._functions.values()
            for n, v in f.versions.items()
            if n not in f.code_removed
        ]
        await asyncio.to_thread(lambda: remove_code(stale_code(self._code_root, kept)))
        self._warm_wanted.set()

    async def _drop_unbound(self, record: SessionRecord) -> None:
        """A session recorded before it was bound (its workspace was coming back when the server
        died) is not adopted: its files in the instance may be partial, and its next save would
        write them over the good snapshot. It ends; its key's next request restores afresh."""
        log.warning("session %s (%s): ended, %s when the server stopped", record.id, record.key, record.state)
        record.state, record.end_reason = "ended", "restore_failed"
        await self._store.put_session(record)
        fn = self._functions.get(record.function)
        instance = fn.instances.get(record.instance_id or "") if fn else None
        if fn is not None and instance is not None and record.workspace is not None:
            config = fn.versions.get(instance.version, fn.latest).config
            await self._workspaces.discard(config, instance, record.key, record.workspace)

    async def _stop_maybe_used(self, fn: FunctionState) -> None:
        """After a restart, an exclusive instance of a persisting function with no session may hold
        part of a workspace whose restore the crash cut short (a session is recorded once bound):
        it is stopped, never handed to another session as a warm one."""
        suspect = [i for i in fn.instances.values() if not i.sessions and _may_hold_a_restore(fn, i)]
        for instance in suspect:
            log.info("instance %s of %s: stopped, it may hold a restore's leftovers", instance.id, fn.name)
        await asyncio.gather(*(self._stop_instance(fn, i) for i in suspect))

    async def _adopt(self, record: InstanceRecord) -> None:
        fn = self._functions.get(record.function)
        version = fn.versions.get(record.version) if fn else None
        if fn is None or version is None:
            await self._store.delete_instance(record.id)
            return
        instance = Instance(record.id, fn.name, record.version, version.config.port, record.created_at)
        instance.last_used_at = instance.meter.since = self._clock.now()
        if await self._manager.adopt(instance, version.config.template):
            await self._meter_from_here(instance)
            self._hold_instance(fn, version, force=True)
            fn.instances[instance.id] = instance
            self._spawn(self._watch(fn, instance), f"watch {instance.id}")
            log.info("instance %s of %s re-adopted", instance.id, fn.name)
        else:
            await self._store.delete_instance(record.id)

    async def _meter_from_here(self, instance: Instance) -> None:
        """An adopted instance's cgroup counted CPU before this server started, which the crashed
        one billed (up to its last usage write): meter from what the counter says now."""
        with contextlib.suppress(AgentcellError):  # gone meanwhile: its watcher ends it
            instance.cpu_ns_metered = (await self._manager.usage(instance)).cpu_ns

    def _restore_session(self, record: SessionRecord) -> None:
        fn = self._functions.get(record.function)
        instance = fn.instances.get(record.instance_id or "") if fn else None
        if fn is None or instance is None:
            record.state, record.end_reason = "ended", "instance_failed"
            self._spawn(self._store.put_session(record), f"end {record.id}")
            return
        session = Session.from_record(record)
        session.meter.since = self._clock.now()  # (time before this server is the old one's)
        if record.workspace is not None:
            config = fn.versions.get(instance.version, fn.latest).config
            self._workspaces.adopt(config, session, record.workspace)
        session.meter.lend_idle_to(instance.stateless, self._clock.now())
        instance.sessions.add(session.id)
        fn.sessions[session.key] = session
        self._sessions[session.id] = session
        self._quotas.hold(split(fn.name)[0], "session", force=True)

    async def aclose(self) -> None:
        """Graceful shutdown after the gateway drained: end every session (pre-stop hook, last
        snapshot) and stop every instance — except where a last snapshot could not be written:
        that session stays live and its instance keeps running past this server, as after a
        crash, for the next start to adopt; its workspace records why."""
        self._accepting = False
        sessions = list(self._sessions.values())
        ends = await asyncio.gather(
            *(self._end_session(s, "shutdown") for s in sessions), return_exceptions=True
        )
        kept: set[str] = set()
        for session, outcome in zip(sessions, ends, strict=True):
            if isinstance(outcome, BaseException):
                if not session.has_ended and session.instance_id is not None:
                    kept.add(session.instance_id)
                await self._left_running(session, outcome)
        for fn in list(self._functions.values()):
            instances = list(fn.instances.values())
            await asyncio.gather(*(self._stop_instance(fn, i) for i in instances if i.id not in kept))
            for instance in [i for i in instances if i.id in kept]:
                await self._meter(fn, instance)
                await self._manager.release(instance)
        await self.flush_once()
        await self.meter_once(self._clock.now())

    async def _left_running(self, session: Session, failure: BaseException) -> None:
        """Shutdown could not end `session`: say why, where its owner will look."""
        if session.has_ended:
            log.error("session %s: shutdown could not finish ending it: %s", session.id, failure)
            return
        session.dirty = True  # (its record, live, is what the next start adopts)
        why = failure.message if isinstance(failure, AgentcellError) else repr(failure)
        log.error("session %s: kept running for the next start: %s", session.id, why)
        await self._workspaces.note_error(
            session,
            f"{why}; at the server's shutdown the session and its instance were left running for "
            "the next start to adopt (its files are there)",
        )


def _closes(session: Session, instance: Instance, reason: EndReason) -> bool:
    """Whether ending `session` runs its pre-stop hook and last snapshot before it ends."""
    return session.state in ("idle", "active") and instance.is_ready and reason != "instance_failed"


def _may_hold_a_restore(fn: FunctionState, instance: Instance) -> bool:
    """Whether a restore into `instance` could have begun before its session was recorded."""
    config = fn.versions.get(instance.version, fn.latest).config
    return config.sessions_per_instance == 1 and config.workspace.persist


def _settle(future: asyncio.Future[None], failure: BaseException | None) -> None:
    if future.done():
        return
    if failure is None:
        future.set_result(None)
    elif isinstance(failure, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(failure)
        future.exception()  # retrieved: nobody may be waiting


def _not_ended(what: str, failure: BaseException) -> AgentcellError:
    """Why an end the client asked for did not happen (a last snapshot failed): retry it."""
    why = failure.message if isinstance(failure, AgentcellError) else repr(failure)
    message = f"{what}: {why}; nothing was lost, retry later"
    return Unavailable(message, retry_after_s=STORE_RETRY_AFTER_S)


def _shown(qualified: str) -> str:
    """A function's name as its tenant knows it (messages never show the qualified `acme.chat`)."""
    return split(qualified)[1]


def _listed(qualified: list[str], most: int = 5) -> str:
    """Function names for an operator, who sees every tenant's: 'chat', 'bot' (tenant acme), …"""
    shown = [
        repr(name) if tenant == DEFAULT_TENANT else f"{name!r} (tenant {tenant})"
        for tenant, name in map(split, qualified[:most])
    ]
    more = f" and {len(qualified) - most} more" if len(qualified) > most else ""
    return ", ".join(shown) + more


def _require_live(fn: FunctionState) -> None:
    """A request that waited for room on a function deleted meanwhile must not start an instance."""
    if fn.deleted:
        raise NotFound(f"function {_shown(fn.name)!r} was deleted")


def _ended_info(record: SessionRecord) -> SessionInfo:
    info = Session.from_record(record).info()
    return info.model_copy(update={"state": record.state, "end_reason": record.end_reason})
