"""What routes get from the app: the services, found on app.state (set once by create_app)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.sandboxes import SandboxService
from agentcell.server.scheduler.scheduler import Scheduler as FunctionScheduler
from agentcell.server.scheduler.workspaces import WorkspaceKeeper


def _sandboxes(request: Request) -> SandboxService:
    service: SandboxService = request.app.state.sandboxes
    return service


Sandboxes = Annotated[SandboxService, Depends(_sandboxes)]


def _pauses(request: Request) -> SandboxPauses:
    pauses: SandboxPauses = request.app.state.pauses
    return pauses


Pauses = Annotated[SandboxPauses, Depends(_pauses)]


def _scheduler(request: Request) -> FunctionScheduler:
    scheduler: FunctionScheduler = request.app.state.scheduler
    return scheduler


Scheduler = Annotated[FunctionScheduler, Depends(_scheduler)]


def _workspaces(request: Request) -> WorkspaceKeeper:
    keeper: WorkspaceKeeper = request.app.state.workspaces
    return keeper


Workspaces = Annotated[WorkspaceKeeper, Depends(_workspaces)]
