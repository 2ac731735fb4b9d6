"""What routes get from the app: the services, found on app.state (set once by create_app)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from agentcell.server.scheduler.sandboxes import SandboxService


def _sandboxes(request: Request) -> SandboxService:
    service: SandboxService = request.app.state.sandboxes
    return service


Sandboxes = Annotated[SandboxService, Depends(_sandboxes)]
