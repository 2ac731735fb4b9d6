"""API keys: `ac_<id>_<secret>`; only the SHA-256 of the whole key is stored, the id is public.

`KeyRing` is the in-memory index the request path uses (a dictionary lookup by hash): revoking a
key removes it at once, for the control plane and the gateway alike.
"""

from __future__ import annotations

import hashlib
import secrets

from agentcell.server.auth.principal import Principal
from agentcell.server.meta.records import KeyRecord

PREFIX = "ac_"
SEEN_MAX = 10_000


def new_key() -> tuple[str, str]:
    """(key id, the whole key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}_{secrets.token_urlsafe(24)}"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(value: str) -> bool:
    return value.startswith(PREFIX) and value.count("_") >= 2


class KeyRing:
    def __init__(self) -> None:
        self._by_hash: dict[str, Principal] = {}
        self._hash_of: dict[str, str] = {}  # key id → hash
        self._seen: dict[str, Principal] = {}
        """keys that checked out, so the request path hashes each key once (cleared on revoke)"""

    def add(self, record: KeyRecord) -> None:
        if record.revoked_at is not None:
            return
        scopes = frozenset(record.scopes.split())
        self._by_hash[record.hash] = Principal(record.tenant, record.id, scopes)
        self._hash_of[record.id] = record.hash

    def remove(self, key_id: str) -> None:
        digest = self._hash_of.pop(key_id, None)
        if digest is not None:
            self._by_hash.pop(digest, None)
        self._seen.clear()

    def remove_tenant(self, tenant: str) -> None:
        for key_id in [k for k, h in self._hash_of.items() if self._by_hash[h].tenant == tenant]:
            self.remove(key_id)

    def principal(self, key: str) -> Principal | None:
        found = self._seen.get(key)
        if found is None and looks_like_key(key):
            found = self._by_hash.get(key_hash(key))
            if found is not None and len(self._seen) < SEEN_MAX:
                self._seen[key] = found
        return found

    def __len__(self) -> int:
        return len(self._by_hash)
