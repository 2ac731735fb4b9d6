"""Tenant namespaces for names: a function `chat` of tenant `acme` is `acme.chat` inside the
scheduler (names cannot hold a dot, so this is one-to-one); the default tenant's names are bare,
so a single-tenant server looks exactly as it did before tenants existed."""

from __future__ import annotations

DEFAULT_TENANT = "default"


def qualify(tenant: str, name: str) -> str:
    return name if tenant == DEFAULT_TENANT else f"{tenant}.{name}"


def split(qualified: str) -> tuple[str, str]:
    """(tenant, name) of a qualified name."""
    tenant, dot, name = qualified.rpartition(".")
    return (tenant, name) if dot else (DEFAULT_TENANT, qualified)


def owned_by(tenant: str, qualified: str) -> bool:
    return split(qualified)[0] == tenant
