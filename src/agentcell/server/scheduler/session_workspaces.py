"""SessionWorkspaces: the life of one session's workspace, as the scheduler drives it — claimed
when the session opens, restored into its instance before its first request (then the restore
hook), saved periodically and on demand, saved one last time and removed when the session ends.

The last save is point-in-time on an exclusive instance: its processes are frozen (cgroup
freezer) while the snapshot is taken, so a file being rewritten in place is stored as one
consistent version, never a mix; the instance is destroyed right after. A shared instance is not
frozen (that would stall its other sessions), so its last save, like every periodic or on-demand
snapshot of a live session, sees files as they are while the walk passes them.

Storage mechanics (paths, snapshots, quotas) are the WorkspaceKeeper's; this module decides when.
"""

from __future__ import annotations

import logging

from agentcell.errors import (
    AgentcellError,
    Conflict,
    InvalidArgument,
    Unavailable,
    WorkspaceCorrupt,
)
from agentcell.protocol.functions import FunctionConfig
from agentcell.server.clock import Clock
from agentcell.server.observability.telemetry import Telemetry
from agentcell.server.scheduler.functions import FunctionState
from agentcell.server.scheduler.instances import Instance, InstanceFailed
from agentcell.server.scheduler.lifecycle import InstanceManager
from agentcell.server.scheduler.sessions import Session
from agentcell.server.scheduler.workspaces import (
    STORE_RETRY_AFTER_S,
    Workspace,
    WorkspaceKeeper,
    storage_path,
    workspace_for,
)
from agentcell.server.storage.snapshots import SnapshotInfo

log = logging.getLogger(__name__)

LOST = "its changes since the previous snapshot are lost"


class SessionWorkspaces:
    def __init__(
        self, keeper: WorkspaceKeeper, manager: InstanceManager, clock: Clock, telemetry: Telemetry
    ) -> None:
        self._keeper = keeper
        self._manager = manager
        self._clock = clock
        self._telemetry = telemetry

    async def claim(self, fn: FunctionState, session: Session, name: str | None) -> Workspace | None:
        """The session's workspace (None when the function does not persist), reserved for it."""
        config = fn.config
        if not config.workspace.persist:
            if name is not None:
                raise InvalidArgument(
                    f"function {fn.name} does not persist workspaces; deploy it with "
                    "workspace.persist=true to use a named workspace"
                )
            return None
        workspace = workspace_for(config, fn.name, session.key, storage_path(fn.name, session.key, name))
        await self._keeper.claim(workspace, session.id)
        return workspace

    def adopt(self, config: FunctionConfig, session: Session, path: str) -> None:
        """A session found live after a restart: its instance kept the files."""
        session.workspace = workspace_for(config, session.function, session.key, path)
        session.attached = True
        session.synced_at = self._clock.now()
        self._keeper.adopt(session.workspace, session.id)

    async def attach(
        self, config: FunctionConfig, instance: Instance, session: Session
    ) -> AgentcellError | None:
        """Restore the workspace into the instance and run the restore hook. Returns why that
        failed (the session must end), or None."""
        assert session.workspace is not None
        session.move("restoring")
        started = self._telemetry.now()
        try:
            restored = await self._keeper.attach(instance.id, session.workspace)
            hook = config.workspace.restore
            if restored is not None and hook is not None:
                env = {"AGENTCELL_WORKSPACE": session.workspace.dir, "AGENTCELL_SESSION_KEY": session.key}
                await self._manager.run_hook(instance, hook.cmd, hook.timeout_s, env, "restore")
        except (AgentcellError, InstanceFailed) as exc:
            error = (
                exc if isinstance(exc, AgentcellError) else WorkspaceCorrupt(f"session {session.key}: {exc}")
            )
            log.warning("session %s: workspace restore failed: %s", session.id, error.message)
            return error
        session.attached = True
        session.synced_at = self._clock.now()
        self._telemetry.phase("restore", started, instance.id)
        return None

    async def snapshot(
        self, config: FunctionConfig, instance: Instance | None, session: Session
    ) -> SnapshotInfo:
        """Save the workspace of a live, bound session now."""
        if session.workspace is None:
            raise InvalidArgument(
                f"function {session.function} does not persist workspaces; deploy it with "
                "workspace.persist=true"
            )
        if not session.attached or session.state not in ("idle", "active") or instance is None:
            raise Conflict(
                f"session {session.id} is {session.state}: its workspace is not in an instance now"
            )
        info = await self._persist(instance, session.workspace, config)
        session.synced_at = self._clock.now()
        return info

    def is_due(self, config: FunctionConfig, session: Session, now: float) -> bool:
        interval = config.workspace.sync_interval_s
        alive = session.attached and session.state in ("idle", "active") and not session.is_closing
        return alive and interval > 0 and now - session.synced_at >= interval

    def ending(self, session: Session) -> None:
        if session.workspace is not None:
            self._keeper.ending(session.workspace, session.id)

    async def final_save(self, config: FunctionConfig, instance: Instance, session: Session) -> None:
        """The last snapshot of an ending session (after its pre-stop hook), taken with an
        exclusive instance frozen. Raises Unavailable when it could not be written for now (the
        object store unreachable): the caller must then keep the session, its instance and its
        files; the instance is thawed again. A failure that waiting cannot mend (the tenant's
        storage quota, an unreadable workspace) is recorded on the workspace as a loss, and the
        session ends."""
        if session.workspace is None or not session.attached or not instance.is_ready:
            return
        try:
            frozen = config.sessions_per_instance == 1 and await self._manager.freeze(instance)
            try:
                info = await self._persist(instance, session.workspace, config)
            except BaseException:
                if frozen:
                    await self._manager.thaw(instance)
                raise
        except Exception as exc:
            why = exc.message if isinstance(exc, AgentcellError) else str(exc) or type(exc).__name__
            message = f"the workspace of session {session.key} could not be saved: {why}"
            if isinstance(exc, Unavailable):
                raise Unavailable(message, retry_after_s=STORE_RETRY_AFTER_S) from exc
            log.error("session %s: %s; it ends without it", session.id, message)
            await self.note_error(session, f"{message}; the session ended without it: {LOST}")
            return
        log.info("session %s: workspace saved as snapshot %d", session.id, info.seq)

    async def note_error(self, session: Session, message: str) -> None:
        """Record on the session's workspace why its files are not (or no longer) saved."""
        if session.workspace is not None:
            await self._keeper.note_error(session.workspace, message)

    async def detach(self, instance: Instance, session: Session) -> None:
        """An ended session's files leave its (shared) instance."""
        if session.workspace is not None:
            await self._keeper.detach(instance.id, session.workspace)

    async def discard(self, config: FunctionConfig, instance: Instance, key: str, path: str) -> None:
        """A session not adopted after a restart: its (shared) instance's copy of its files goes."""
        await self._keeper.detach(instance.id, workspace_for(config, instance.function, key, path))

    def unclaim(self, session: Session) -> None:
        if session.workspace is not None:
            self._keeper.unclaim(session.workspace, session.id)

    async def _persist(
        self, instance: Instance, workspace: Workspace, config: FunctionConfig
    ) -> SnapshotInfo:
        started = self._telemetry.now()
        try:
            info = await self._keeper.persist(instance.id, workspace, config)
        except Exception:
            self._telemetry.persist_failed()
            raise
        self._telemetry.persisted(started, info.uploaded_bytes)
        return info
