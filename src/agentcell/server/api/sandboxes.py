"""/v1/sandboxes: create, list, get, renew, kill."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from agentcell.errors import InvalidArgument
from agentcell.protocol.sandboxes import SandboxCreate, SandboxInfo, SandboxList, SandboxState, SandboxTimeout
from agentcell.server.api.deps import Sandboxes

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
async def create_sandbox(body: SandboxCreate, sandboxes: Sandboxes) -> SandboxInfo:
    return (await sandboxes.create(body)).info()


@router.get("")
async def list_sandboxes(
    sandboxes: Sandboxes,
    metadata: Annotated[list[str], Query(max_length=64, description="key=value; all must match")] = [],  # noqa: B006
    state: SandboxState | None = None,
) -> SandboxList:
    found = sandboxes.find(parse_metadata_filter(metadata), state)
    return SandboxList(sandboxes=[s.info() for s in found])


@router.get("/{sandbox_id}")
async def get_sandbox(sandbox_id: str, sandboxes: Sandboxes) -> SandboxInfo:
    return sandboxes.get(sandbox_id).info()


@router.post("/{sandbox_id}/timeout")
async def set_sandbox_timeout(sandbox_id: str, body: SandboxTimeout, sandboxes: Sandboxes) -> SandboxInfo:
    return sandboxes.set_timeout(sandbox_id, body.timeout_s).info()


@router.delete("/{sandbox_id}", status_code=204)
async def kill_sandbox(sandbox_id: str, sandboxes: Sandboxes) -> Response:
    await sandboxes.kill(sandbox_id)
    return Response(status_code=204)
