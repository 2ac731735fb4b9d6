"""What routes get from the app: the services, found on app.state (set once by create_app).

The providers are `async def` on purpose: FastAPI runs a plain `def` dependency in its thread
pool, a thread hand-off per request (two wake-ups, each a VM exit on a virtual machine)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.sandbox_snapshots import SandboxSnapshots
from agentcell.server.scheduler.sandboxes import SandboxService
from agentcell.server.scheduler.scheduler import Scheduler as FunctionScheduler
from agentcell.server.scheduler.traffic import PrivateTraffic
from agentcell.server.scheduler.watch_streams import WatchStreams
from agentcell.server.scheduler.workspaces import WorkspaceKeeper


async def _service(request: Request) -> SandboxService:
    service: SandboxService = request.app.state.sandboxes
    return service


async def _wake(request: Request) -> None:
    """Work in the sandbox the path names (if any): a paused one created with `auto_resume` is
    resumed first (SandboxPauses.wake)."""
    sandbox_id = request.path_params.get("sandbox_id")
    if sandbox_id is not None:
        pauses: SandboxPauses = request.app.state.pauses
        await pauses.wake(sandbox_id)


async def _sandboxes(request: Request) -> SandboxService:
    await _wake(request)
    return await _service(request)


Sandboxes = Annotated[SandboxService, Depends(_sandboxes)]
"""for work in a sandbox (commands, code, files): a paused one with `auto_resume` wakes"""
SandboxControl = Annotated[SandboxService, Depends(_service)]
"""for what changes a sandbox from outside (its timeout): a paused one stays paused"""


async def _pauses(request: Request) -> SandboxPauses:
    pauses: SandboxPauses = request.app.state.pauses
    return pauses


Pauses = Annotated[SandboxPauses, Depends(_pauses)]


async def _scheduler(request: Request) -> FunctionScheduler:
    scheduler: FunctionScheduler = request.app.state.scheduler
    return scheduler


Scheduler = Annotated[FunctionScheduler, Depends(_scheduler)]


async def _traffic(request: Request) -> PrivateTraffic:
    """The sandbox service's: which sandboxes' ports are private, and their tokens."""
    sandboxes: SandboxService = request.app.state.sandboxes
    return sandboxes.traffic


Traffic = Annotated[PrivateTraffic, Depends(_traffic)]


async def _snapshots(request: Request) -> SandboxSnapshots:
    snapshots: SandboxSnapshots = request.app.state.snapshots
    return snapshots


Snapshots = Annotated[SandboxSnapshots, Depends(_snapshots)]


async def _workspaces(request: Request) -> WorkspaceKeeper:
    keeper: WorkspaceKeeper = request.app.state.workspaces
    return keeper


Workspaces = Annotated[WorkspaceKeeper, Depends(_workspaces)]


async def _watches(request: Request) -> WatchStreams:
    await _wake(request)  # (a watch is work in it: E2B's watch_dir wakes it too)
    watches: WatchStreams = request.app.state.watches
    return watches


Watches = Annotated[WatchStreams, Depends(_watches)]
