"""Sandbox snapshots and forks: a running sandbox's /home/user kept (its processes are not), new
sandboxes started from it (`SandboxCreate.snapshot`), and forks (a snapshot started `count` times).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from agentcell.protocol.common import ErrorEnvelope, ReplyModel, WireModel
from agentcell.protocol.sandboxes import MAX_FORKS, MAX_TIMEOUT_S, SandboxInfo

MAX_SNAPSHOT_PAGE = 100
"""the most snapshots one page of `GET /v1/snapshots` holds (and its default `limit`)"""
SnapshotName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
"""letters, digits and ._:/- starting with a letter or digit (the server says so when not)"""


class SandboxSnapshotCreate(WireModel):
    name: SnapshotName | None = Field(
        default=None,
        description="a name unique among the tenant's snapshots: a snapshot taken with a name "
        "already in use replaces that snapshot's files, keeping its id",
    )


class SandboxSnapshotInfo(ReplyModel):
    id: str
    name: str | None = None
    sandbox_id: str = Field(description="the sandbox it was taken of (which may have ended since)")
    template: str = Field(description="the template a sandbox started from it runs")
    cpu: float
    memory_mb: int
    disk_mb: int
    created_at: datetime


class SandboxSnapshotList(ReplyModel):
    """One page of the tenant's snapshots, oldest first."""

    snapshots: list[SandboxSnapshotInfo]
    next_token: str | None = Field(
        default=None, description="the `next_token` that gets the next page; null: this is the last"
    )


class SandboxFork(WireModel):
    count: int = Field(default=1, ge=1, le=MAX_FORKS, description=f"sandboxes to start, 1-{MAX_FORKS}")
    timeout_s: int | None = Field(
        default=None, ge=1, le=MAX_TIMEOUT_S, description="their timeout (default: the source's at create)"
    )


class ForkOutcome(ReplyModel):
    """One fork: the sandbox it started, or the error that kept it from starting."""

    sandbox: SandboxInfo | None = None
    error: ErrorEnvelope | None = None


class ForkList(ReplyModel):
    forks: list[ForkOutcome]
