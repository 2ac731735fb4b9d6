"""TenantService: tenants, their quotas and their API keys — durable in the meta store, indexed
in memory (`KeyRing`) for the request path. The first start makes the `default` tenant and an
admin key, written to a file only the server's user may read.

A deleted tenant stays as a tombstone and its name is never given again: usage periods and audit
entries are kept by tenant name (for billing, until the history retention prunes them), so a new
tenant under that name would inherit them."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from agentcell.errors import Conflict, InvalidArgument, NotFound
from agentcell.protocol.tenants import KeyCreate, KeyCreated, KeyInfo, TenantInfo, TenantQuotas
from agentcell.server.auth.keys import KeyRing, key_hash, looks_like_key, new_key
from agentcell.server.auth.names import DEFAULT_TENANT
from agentcell.server.auth.principal import SERVER_WIDE_SCOPES
from agentcell.server.clock import Clock
from agentcell.server.meta.records import KeyRecord, TenantRecord
from agentcell.server.meta.store import MetaStore

log = logging.getLogger(__name__)


def _ts(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def key_info(record: KeyRecord) -> KeyInfo:
    return KeyInfo(
        id=record.id,
        tenant=record.tenant,
        scopes=record.scopes.split(),
        name=record.name,
        created_at=datetime.fromtimestamp(record.created_at, UTC),
        revoked_at=_ts(record.revoked_at),
    )


class TenantService:
    def __init__(self, store: MetaStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self.ring = KeyRing()
        self._tenants: dict[str, TenantRecord] = {}
        self._deleted: dict[str, TenantRecord] = {}
        """tombstones, by name: names that are not given again"""
        self._quotas: dict[str, TenantQuotas] = {}
        self._keys: dict[str, KeyRecord] = {}

    async def load(self) -> None:
        for tenant in await self._store.tenants():
            if tenant.deleted_at is None:
                self._remember(tenant)
            else:
                self._deleted[tenant.name] = tenant
        for key in await self._store.keys():
            self._keys[key.id] = key
            self.ring.add(key)

    async def bootstrap(self, key_file: Path, given_key: str | None) -> str | None:
        """At the first start: the default tenant and an admin key (`given_key`, or a new one),
        written to `key_file` (mode 0600). Returns the key when it was made now, else None."""
        if DEFAULT_TENANT not in self._tenants:
            await self.create_tenant(DEFAULT_TENANT, TenantQuotas())
        if self._keys:
            return None
        if given_key is not None and not looks_like_key(given_key):
            raise InvalidArgument("AGENTCELL_ADMIN_KEY must look like ac_<id>_<secret>")
        request = KeyCreate(scopes=["*", "admin"], name="admin")
        created = await self.create_key(DEFAULT_TENANT, request, given_key)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(created.key + "\n")
        return created.key

    # -- tenants -----------------------------------------------------------------------------

    async def create_tenant(self, name: str, quotas: TenantQuotas) -> TenantInfo:
        if name in self._tenants:
            raise Conflict(f"tenant {name!r} exists already")
        if name in self._deleted:
            raise Conflict(
                f"tenant name {name!r} was used by a tenant deleted at {self._deleted_at(name)}; its "
                "usage and audit history keep that name, so it is not given again: choose another name"
            )
        record = TenantRecord(name, self._clock.now(), quotas.model_dump_json())
        await self._store.put_tenant(record)
        self._remember(record)
        return self.tenant(name)

    async def update_tenant(self, name: str, changes: TenantQuotas) -> TenantInfo:
        """The quotas set in `changes` (its `model_fields_set`; null: unlimited) take their new
        value; the others keep theirs. Merged into the record at once, so that two updates in
        flight both count."""
        record = self._record(name)
        quotas = TenantQuotas.model_validate_json(record.quotas_json)
        changed = changes.model_dump(include=changes.model_fields_set)
        record.quotas_json = quotas.model_copy(update=changed).model_dump_json()
        await self._store.put_tenant(record)
        self._remember(record)
        return self.tenant(name)

    async def delete_tenant(self, name: str) -> None:
        """Its keys go; the tenant stays as a tombstone (see the module's docstring)."""
        record = self._record(name)
        if name == DEFAULT_TENANT:
            raise InvalidArgument("the default tenant holds the admin key and cannot be deleted")
        deleted_at = self._clock.now()
        await self._store.delete_tenant(name, deleted_at)
        self.ring.remove_tenant(name)
        self._tenants.pop(name, None)
        self._quotas.pop(name, None)
        record.deleted_at = deleted_at
        self._deleted[name] = record
        self._keys = {k: v for k, v in self._keys.items() if v.tenant != name}

    def tenant(self, name: str) -> TenantInfo:
        record = self._record(name)
        return TenantInfo(
            name=record.name,
            created_at=datetime.fromtimestamp(record.created_at, UTC),
            quotas=self._quotas[name],
        )

    def tenants(self) -> list[TenantInfo]:
        return [self.tenant(name) for name in sorted(self._tenants)]

    def quotas(self, name: str) -> TenantQuotas:
        return self._quotas.get(name) or TenantQuotas()

    def with_history(self, name: str) -> str:
        """`name`, if a tenant has it or had it (its usage and audit history are kept); else
        NotFound."""
        if name not in self._deleted:
            self._record(name)
        return name

    def _record(self, name: str) -> TenantRecord:
        record = self._tenants.get(name)
        if record is None:
            gone = f" (deleted at {self._deleted_at(name)})" if name in self._deleted else ""
            raise NotFound(f"tenant {name!r} not found{gone}")
        return record

    def _deleted_at(self, name: str) -> str:
        return datetime.fromtimestamp(self._deleted[name].deleted_at or 0, UTC).isoformat()

    def _remember(self, record: TenantRecord) -> None:
        self._tenants[record.name] = record
        self._quotas[record.name] = TenantQuotas.model_validate_json(record.quotas_json)

    # -- keys --------------------------------------------------------------------------------

    async def create_key(self, tenant: str, request: KeyCreate, key: str | None = None) -> KeyCreated:
        self._record(tenant)
        server_wide = sorted(set(request.scopes) & SERVER_WIDE_SCOPES.keys())
        if server_wide and tenant != DEFAULT_TENANT:
            raise InvalidArgument(
                f"only keys of the {DEFAULT_TENANT} tenant may hold the {' and '.join(server_wide)} "
                "scope: it covers every tenant"
            )
        key_id, made = new_key()
        if key is not None:  # an operator-given bootstrap key
            made, key_id = key, key.split("_")[1] or key_id
        record = KeyRecord(
            key_id, tenant, key_hash(made), " ".join(request.scopes), request.name, self._clock.now()
        )
        await self._store.put_key(record)
        self._keys[record.id] = record
        self.ring.add(record)
        return KeyCreated(**key_info(record).model_dump(), key=made)

    def keys(self, tenant: str) -> list[KeyInfo]:
        self._record(tenant)
        return [key_info(k) for k in self._keys.values() if k.tenant == tenant]

    async def revoke(self, key_id: str, tenant: str | None) -> KeyInfo:
        """Revoke now (the request path stops accepting it at once). `tenant`: the caller's, when
        it may only revoke its own keys."""
        record = self._keys.get(key_id)
        if record is None or (tenant is not None and record.tenant != tenant):
            raise NotFound(f"API key {key_id!r} not found")
        if record.revoked_at is None:
            record.revoked_at = self._clock.now()
            await self._store.put_key(record)
            self.ring.remove(key_id)
        return key_info(record)
