"""Session: a client's binding to one instance, and the explicit state machine it moves through.

pending ──bind──▶ idle ◀──release── active
   │  ╲            │ ──acquire──▶     │
   │   restoring ──┤                  │     (restoring: its workspace is coming back from storage)
   └──────────────▶ ended ◀───────────┘     (reason: ttl, idle, deleted, instance_failed, ...)
"""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agentcell.errors import Internal
from agentcell.protocol.sessions import EndReason, SessionInfo, SessionState, SessionWorkspace
from agentcell.server.meta.records import SessionRecord
from agentcell.server.scheduler.metering import ActivityMeter
from agentcell.server.scheduler.workspaces import Workspace

TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    "pending": frozenset({"restoring", "idle", "ended"}),
    "restoring": frozenset({"idle", "ended"}),
    "idle": frozenset({"active", "ended"}),
    "active": frozenset({"idle", "ended"}),
    "ended": frozenset(),
}


SESSION_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")


def new_session_id() -> str:
    return "ses_" + secrets.token_hex(10)


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


@dataclass(slots=True, eq=False)
class Session:
    id: str
    function: str
    key: str
    version: int
    created_at: float
    last_active_at: float
    ttl_s: int
    idle_timeout_s: int
    metadata: dict[str, str] = field(default_factory=dict)
    instance_id: str | None = None
    state: SessionState = "pending"
    end_reason: EndReason | None = None
    in_flight: int = 0
    bound: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    dirty: bool = True
    workspace: Workspace | None = None
    attached: bool = False
    """its workspace is in its instance: it is snapshotted from there until the session ends"""
    synced_at: float = 0.0
    unnamed: bool = False
    """an MCP session the instance has not named yet (its key is a placeholder)"""
    meter: ActivityMeter = field(default_factory=lambda: ActivityMeter(0.0))
    waiters: int = 0
    """requests waiting for it to be bound"""
    closing: asyncio.Future[None] | None = None
    """while it ends: its pre-stop hook and last snapshot run with the session still live (a
    failed snapshot keeps it); requests for its key wait for the outcome"""
    save_failures: int = 0
    """final snapshots that failed (each kept the session); the reaper gives up after a bound"""
    end_retry_at: float = 0.0
    """the reaper tries to end it again (a failed final snapshot) no earlier than this"""

    @property
    def expires_at(self) -> float:
        return self.created_at + self.ttl_s

    @property
    def idle_expires_at(self) -> float:
        return self.last_active_at + self.idle_timeout_s

    @property
    def has_ended(self) -> bool:
        return self.state == "ended"

    @property
    def is_closing(self) -> bool:
        return self.closing is not None and not self.closing.done()

    @property
    def is_queued(self) -> bool:
        """Pending with no instance reserved yet: it waits for room (at max_instances)."""
        return self.state == "pending" and self.instance_id is None

    def move(self, to: SessionState) -> None:
        if to not in TRANSITIONS[self.state]:
            raise Internal(f"session {self.id}: no transition {self.state} → {to}")
        self.state = to
        self.dirty = True

    def expiry_reason(self, now: float) -> EndReason | None:
        """Why this session should end at `now`, if it should."""
        if self.state == "ended" or self.is_closing or now < self.end_retry_at:
            return None
        if now >= self.expires_at:
            return "ttl"
        if self.in_flight == 0 and self.state in ("idle", "active") and now >= self.idle_expires_at:
            return "idle"
        return None

    def acquire(self, now: float) -> None:
        self.in_flight += 1
        self.meter.begin(now)
        if self.state == "idle":
            self.move("active")

    def release(self, now: float) -> None:
        self.in_flight -= 1
        self.meter.end(now)
        self.last_active_at = now
        self.dirty = True
        if self.in_flight == 0 and self.state == "active":
            self.move("idle")

    def end(self, reason: EndReason, error: Exception | None = None) -> None:
        """End the session; requests still waiting for it to bind get `error` (or SessionEnded)."""
        if self.state != "ended":
            self.move("ended")
            self.end_reason = reason
        if not self.bound.done():
            self.bound.set_exception(error or SessionEnded(self))
            self.bound.exception()  # mark retrieved: nobody may be waiting

    def renew(self, now: float, ttl_s: int | None, idle_timeout_s: int | None) -> None:
        """New limits counted from now; the session stays where it is."""
        if ttl_s is not None:
            self.ttl_s = int(now - self.created_at) + ttl_s
        if idle_timeout_s is not None:
            self.idle_timeout_s = idle_timeout_s
            self.last_active_at = now
        self.dirty = True

    def info(self) -> SessionInfo:
        return SessionInfo(
            id=self.id,
            key=self.key,
            function=self.function,
            version=self.version,
            instance_id=self.instance_id,
            state=self.state,
            end_reason=self.end_reason,
            created_at=_ts(self.created_at),
            last_active_at=_ts(self.last_active_at),
            expires_at=_ts(self.expires_at),
            idle_expires_at=_ts(self.idle_expires_at),
            ttl_s=self.ttl_s,
            idle_timeout_s=self.idle_timeout_s,
            metadata=dict(self.metadata),
            workspace=self._workspace_info(),
        )

    def _workspace_info(self) -> SessionWorkspace | None:
        if self.workspace is None:
            return None
        return SessionWorkspace(
            path=self.workspace.dir,
            storage_path=self.workspace.storage_path,
            quota_bytes=self.workspace.quota_bytes,
        )

    def record(self) -> SessionRecord:
        return SessionRecord(
            id=self.id,
            function=self.function,
            key=self.key,
            version=self.version,
            instance_id=self.instance_id,
            state=self.state,
            end_reason=self.end_reason,
            created_at=self.created_at,
            last_active_at=self.last_active_at,
            expires_at=self.expires_at,
            ttl_s=self.ttl_s,
            idle_timeout_s=self.idle_timeout_s,
            metadata=dict(self.metadata),
            workspace=self.workspace.storage_path if self.workspace else None,
        )

    @classmethod
    def from_record(cls, record: SessionRecord) -> Session:
        session = cls(
            id=record.id,
            function=record.function,
            key=record.key,
            version=record.version,
            created_at=record.created_at,
            last_active_at=record.last_active_at,
            ttl_s=record.ttl_s,
            idle_timeout_s=record.idle_timeout_s,
            metadata=dict(record.metadata),
            instance_id=record.instance_id,
            state="idle",
            dirty=False,
        )
        session.bound.set_result(None)
        return session


class SessionEnded(Exception):
    """Raised to requests waiting on a session that ended before it was bound."""

    def __init__(self, session: Session) -> None:
        super().__init__(f"session {session.key} ended ({session.end_reason})")
        self.session = session
