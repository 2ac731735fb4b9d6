"""/v1/sandboxes: create, list, get, renew, pause, resume, kill."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from agentcell.errors import Conflict, InvalidArgument
from agentcell.protocol.sandboxes import (
    SandboxCreate,
    SandboxInfo,
    SandboxList,
    SandboxResume,
    SandboxState,
    SandboxTimeout,
)
from agentcell.server.api.deps import Pauses, Sandboxes
from agentcell.server.api.lean import lean

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])
SandboxId = Annotated[str, "sandbox id"]


def parse_metadata_filter(pairs: list[str]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"metadata filter must look like key=value, got {pair!r}")
        wanted[key] = value
    return wanted


@router.post("", status_code=201)
@lean
async def create_sandbox(body: SandboxCreate, sandboxes: Sandboxes) -> SandboxInfo:
    return (await sandboxes.create(body)).info()


@router.get("")
async def list_sandboxes(
    pauses: Pauses,
    metadata: Annotated[list[str], Query(max_length=64, description="key=value; all must match")] = [],  # noqa: B006
    state: SandboxState | None = None,
) -> SandboxList:
    found = pauses.find(parse_metadata_filter(metadata), state)
    return SandboxList(sandboxes=[s.info() for s in found])


@router.get("/{sandbox_id}")
@lean
async def get_sandbox(sandbox_id: str, pauses: Pauses) -> SandboxInfo:
    return pauses.get(sandbox_id).info()


@router.post("/{sandbox_id}/timeout")
@lean
async def set_sandbox_timeout(
    sandbox_id: str, body: SandboxTimeout, sandboxes: Sandboxes, pauses: Pauses
) -> SandboxInfo:
    if pauses.paused(sandbox_id) is not None:
        raise Conflict(f"sandbox {sandbox_id} is paused; resume it first (POST .../resume takes a timeout_s)")
    return sandboxes.set_timeout(sandbox_id, body.timeout_s).info()


@router.post("/{sandbox_id}/pause")
async def pause_sandbox(sandbox_id: str, pauses: Pauses) -> SandboxInfo:
    """Save /home/user to object storage and stop the sandbox (its processes end)."""
    return (await pauses.pause(sandbox_id)).sandbox.info()


@router.post("/{sandbox_id}/resume")
async def resume_sandbox(sandbox_id: str, pauses: Pauses, body: SandboxResume | None = None) -> SandboxInfo:
    """Start a paused sandbox again, same id, its files restored before this answers."""
    return (await pauses.resume(sandbox_id, body.timeout_s if body is not None else None)).info()


@router.delete("/{sandbox_id}", status_code=204)
@lean
async def kill_sandbox(sandbox_id: str, pauses: Pauses) -> Response:
    """End a running sandbox, or delete a paused one with its saved files."""
    await pauses.kill(sandbox_id)
    return Response(status_code=204)
