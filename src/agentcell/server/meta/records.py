"""The durable records: what survives a server restart. Plain dataclasses; JSON for nested config."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class FunctionRecord:
    name: str
    version: int
    config_json: str
    code_dir: str
    created_at: float
    updated_at: float


@dataclass(slots=True)
class SessionRecord:
    id: str
    function: str
    key: str
    version: int
    instance_id: str | None
    state: str
    end_reason: str | None
    created_at: float
    last_active_at: float
    expires_at: float
    ttl_s: int
    idle_timeout_s: int
    metadata: dict[str, str] = field(default_factory=dict)
    workspace: str | None = None
    """its workspace's storage path"""


@dataclass(slots=True)
class InstanceRecord:
    id: str
    function: str
    version: int
    state: str
    created_at: float


@dataclass(slots=True)
class WorkspaceRecord:
    """A stored workspace and its last good snapshot (seq 0: none yet)."""

    path: str
    tenant: str
    function: str | None
    key: str | None
    stored_bytes: int = 0
    seq: int = 0
    snapshot_at: float = 0.0
    files: int = 0
    logical_bytes: int = 0
    uploaded_bytes: int = 0
    error: str | None = None


@dataclass(slots=True)
class PausedSandboxRecord:
    """A paused sandbox: how to start it again; its /home/user is the snapshot at `storage_path`."""

    id: str
    tenant: str
    request_json: str
    """its SandboxCreate"""
    storage_path: str
    created_at: float
    paused_at: float
    keep_until: float
    """deleted (snapshot and record) at this time unless resumed"""
    labels_json: str = "{}"
    """what an API layer keeps with it (the E2B template name)"""


@dataclass(slots=True)
class SandboxSnapshotRecord:
    """A sandbox's snapshot: its /home/user at `storage_path` and the request a sandbox created
    from it starts with. Kept until deleted, whatever becomes of the sandbox it was taken of."""

    id: str
    tenant: str
    name: str | None
    """the name it was given (unique per tenant), or None"""
    sandbox_id: str
    """the sandbox it was taken of"""
    request_json: str
    """that sandbox's SandboxCreate"""
    storage_path: str
    created_at: float


@dataclass(slots=True)
class UnfinishedSaveRecord:
    """A storage path a node began writing before any record referencing it existed (a workspace
    row, a paused sandbox): deleted once that record is written. One left by an earlier run of the
    node (killed mid-save) marks objects that nothing references: its next start sweeps them."""

    path: str
    node: str
    """the node that writes it (records of other nodes are never swept by this one)"""
    run: str
    """the server process that wrote it (each start is a new run)"""
    tenant: str
    function: str
    key: str
    """the workspace's, as its row will have them"""
    kind: str
    """'session': finished by its workspace row; 'pause': finished by its paused sandbox's record"""
    started_at: float


@dataclass(slots=True)
class UsageRecord:
    """One period of one owner's usage (kind: session, instance, sandbox or storage)."""

    tenant: str
    kind: str
    start: float
    end: float
    function: str | None = None
    session_id: str | None = None
    session_key: str | None = None
    instance_id: str | None = None
    sandbox_id: str | None = None
    active_s: float = 0.0
    idle_s: float = 0.0
    cpu_cores: float = 0.0
    memory_gib: float = 0.0
    cpu_s: float = 0.0
    memory_peak_bytes: int = 0
    stored_gib_h: float = 0.0


@dataclass(slots=True)
class AuditRecord:
    """One control-plane action: who did what to which target, with what result (never a body)."""

    at: float
    actor: str
    tenant: str
    action: str
    target: str
    status: int
    request_id: str
    method: str
    path: str


@dataclass(slots=True)
class TenantRecord:
    name: str
    created_at: float
    quotas_json: str = "{}"
    deleted_at: float | None = None
    """set: a tombstone, whose name is not given again (its usage and audit history keep it)"""


@dataclass(slots=True)
class KeyRecord:
    """An API key: only its SHA-256 is kept; `id` is the public part shown in listings."""

    id: str
    tenant: str
    hash: str
    scopes: str
    """space-separated"""
    name: str
    created_at: float
    revoked_at: float | None = None
