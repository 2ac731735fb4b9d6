"""Tenants and API keys (async core; admin keys only).

acme = await client.tenants.create("acme", TenantQuotas(max_sessions=500, max_functions=20))
key = await client.tenants.create_key("acme", scopes=["sandboxes:write"])   # key.key: shown once
await client.tenants.revoke_key(key.id)
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from agentcell.client.api import ApiClient, request_body, segment
from agentcell.protocol.tenants import (
    KeyCreate,
    KeyCreated,
    KeyInfo,
    KeyList,
    TenantCreate,
    TenantInfo,
    TenantList,
    TenantQuotas,
    TenantUpdate,
)


class AsyncTenants:
    """`client.tenants`: tenants, their quotas and their API keys."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api

    async def create(self, name: str, quotas: TenantQuotas | None = None) -> TenantInfo:
        body = request_body(TenantCreate, {"name": name, "quotas": (quotas or TenantQuotas()).model_dump()})
        return await self._api.call_model(TenantInfo, "POST", "/v1/tenants", json=body)

    async def list(self) -> builtins.list[TenantInfo]:
        return (await self._api.call_model(TenantList, "GET", "/v1/tenants")).tenants

    async def get(self, name: str) -> TenantInfo:
        return await self._api.call_model(TenantInfo, "GET", f"/v1/tenants/{segment(name)}")

    async def set_quotas(self, name: str, quotas: TenantQuotas) -> TenantInfo:
        body = request_body(TenantUpdate, {"quotas": quotas.model_dump()})
        return await self._api.call_model(TenantInfo, "PATCH", f"/v1/tenants/{segment(name)}", json=body)

    async def delete(self, name: str) -> None:
        """Delete the tenant and its keys. ConflictError while it still has sandboxes (live or
        paused), functions or stored workspaces: delete those first."""
        await self._api.call("DELETE", f"/v1/tenants/{segment(name)}")

    async def create_key(self, tenant: str, scopes: Sequence[str] = ("*",), name: str = "") -> KeyCreated:
        """A new API key; `.key` is in this answer only."""
        body = request_body(KeyCreate, {"scopes": list(scopes), "name": name})
        path = f"/v1/tenants/{segment(tenant)}/keys"
        return await self._api.call_model(KeyCreated, "POST", path, json=body)

    async def keys(self, tenant: str) -> builtins.list[KeyInfo]:
        path = f"/v1/tenants/{segment(tenant)}/keys"
        return (await self._api.call_model(KeyList, "GET", path)).keys

    async def revoke_key(self, key_id: str) -> KeyInfo:
        """Stops working at once, on the API and the gateway."""
        return await self._api.call_model(KeyInfo, "DELETE", f"/v1/keys/{segment(key_id)}")
