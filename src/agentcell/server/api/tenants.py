"""/v1/tenants and /v1/keys: tenants, their quotas and their API keys (admin keys only)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from agentcell.errors import Conflict
from agentcell.protocol.tenants import (
    KeyCreate,
    KeyCreated,
    KeyInfo,
    KeyList,
    TenantCreate,
    TenantInfo,
    TenantList,
    TenantUpdate,
)
from agentcell.server.auth.names import split
from agentcell.server.auth.tenants import TenantService

router = APIRouter(tags=["tenants"])


def _service(request: Request) -> TenantService:
    service: TenantService = request.app.state.tenants
    return service


@router.post("/v1/tenants", status_code=201)
async def create_tenant(body: TenantCreate, request: Request) -> TenantInfo:
    return await _service(request).create_tenant(body.name, body.quotas)


@router.get("/v1/tenants")
async def list_tenants(request: Request) -> TenantList:
    return TenantList(tenants=_service(request).tenants())


@router.get("/v1/tenants/{name}")
async def get_tenant(name: str, request: Request) -> TenantInfo:
    return _service(request).tenant(name)


@router.patch("/v1/tenants/{name}")
async def update_tenant(name: str, body: TenantUpdate, request: Request) -> TenantInfo:
    return await _service(request).update_tenant(name, body.quotas)


@router.delete("/v1/tenants/{name}", status_code=204)
async def delete_tenant(name: str, request: Request) -> Response:
    """Refused while the tenant still has anything: it would run on, unowned. Its name is not
    given again: its usage and audit history stay under it (TenantService)."""
    _service(request).tenant(name)  # NotFound first
    held = await _still_held(request, name)
    if held:
        raise Conflict(f"tenant {name!r} still has {', '.join(held)}; delete them first")
    await _service(request).delete_tenant(name)
    return Response(status_code=204)


async def _still_held(request: Request, tenant: str) -> list[str]:
    state = request.app.state
    counts = {
        "sandbox(es), live or paused": state.pauses.held_by(tenant),
        "function(s)": sum(split(fn.name)[0] == tenant for fn in state.scheduler.functions()),
        "stored workspace(s)": len(await state.workspaces.records(tenant)),
    }
    return [f"{n} {what}" for what, n in counts.items() if n]


@router.post("/v1/tenants/{name}/keys", status_code=201)
async def create_key(name: str, body: KeyCreate, request: Request) -> KeyCreated:
    """The key is in this answer only; it is stored hashed."""
    return await _service(request).create_key(name, body)


@router.get("/v1/tenants/{name}/keys")
async def list_keys(name: str, request: Request) -> KeyList:
    return KeyList(keys=_service(request).keys(name))


@router.delete("/v1/keys/{key_id}")
async def revoke_key(key_id: str, request: Request) -> KeyInfo:
    """Revoked at once, on the API and the gateway alike."""
    return await _service(request).revoke(key_id, None)
