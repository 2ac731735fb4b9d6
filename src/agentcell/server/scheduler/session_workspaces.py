"""SessionWorkspaces: the life of one session's workspace, as the scheduler drives it — claimed
when the session opens, restored into its instance before its first request (then the restore
hook), saved periodically and on demand, saved one last time and removed when the session ends.

Storage mechanics (paths, snapshots, quotas) are the WorkspaceKeeper's; this module decides when.
"""

from __future__ import annotations

import logging

from agentcell.errors import AgentcellError, Conflict, InvalidArgument, WorkspaceCorrupt
from agentcell.protocol.functions import FunctionConfig
from agentcell.server.clock import Clock
from agentcell.server.observability.telemetry import Telemetry
from agentcell.server.scheduler.functions import FunctionState
from agentcell.server.scheduler.instances import Instance, InstanceFailed
from agentcell.server.scheduler.lifecycle import InstanceManager
from agentcell.server.scheduler.sessions import Session
from agentcell.server.scheduler.workspaces import Workspace, WorkspaceKeeper, storage_path, workspace_for
from agentcell.server.storage.snapshots import SnapshotInfo

log = logging.getLogger(__name__)


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
        alive = session.attached and session.state in ("idle", "active")
        return alive and interval > 0 and now - session.synced_at >= interval

    def ending(self, session: Session) -> None:
        if session.workspace is not None:
            self._keeper.ending(session.workspace, session.id)

    async def save_and_detach(self, config: FunctionConfig, instance: Instance, session: Session) -> None:
        """The last snapshot of an ending session, then its files leave the instance."""
        if session.workspace is None:
            return
        if session.attached and instance.is_ready:
            try:
                info = await self._persist(instance, session.workspace, config)
                log.info("session %s: workspace saved as snapshot %d", session.id, info.seq)
            except Exception as exc:
                log.warning("session %s: workspace could not be saved: %s", session.id, exc)
        await self._keeper.detach(instance.id, session.workspace)

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
