"""QuotaGuard: what each tenant holds right now (sessions, instances, sandboxes, cores, memory),
checked against its quotas before anything new is taken. In memory: it is rebuilt as sessions and
instances are restored after a restart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from agentcell.errors import QuotaExceeded
from agentcell.protocol.tenants import TenantQuotas

Kind = Literal["session", "instance", "sandbox"]


@dataclass(slots=True)
class Held:
    session: int = 0
    instance: int = 0
    sandbox: int = 0
    cpu: float = 0.0
    memory_mb: int = 0


class QuotaGuard:
    def __init__(self, quotas: Callable[[str], TenantQuotas]) -> None:
        self._quotas = quotas
        self._held: dict[str, Held] = {}

    def hold(
        self, tenant: str, kind: Kind, cpu: float = 0.0, memory_mb: int = 0, *, force: bool = False
    ) -> None:
        """Take one `kind` (and its cores and memory) for `tenant`, or raise QuotaExceeded.
        `force`: count it whatever the quotas (what a restart finds running)."""
        held = self._held.setdefault(tenant, Held())
        if not force:
            self._check(tenant, held, kind, cpu, memory_mb)
        setattr(held, kind, getattr(held, kind) + 1)
        held.cpu += cpu
        held.memory_mb += memory_mb

    def _check(self, tenant: str, held: Held, kind: Kind, cpu: float, memory_mb: int) -> None:
        quotas = self._quotas(tenant)
        limit = {
            "session": quotas.max_sessions,
            "instance": quotas.max_instances,
            "sandbox": quotas.max_sandboxes,
        }[kind]
        if limit is not None and getattr(held, kind) + 1 > limit:
            plural = "sandboxes" if kind == "sandbox" else f"{kind}s"
            raise QuotaExceeded(f"tenant {tenant} is at its quota of {limit} {plural}; end some first")
        if quotas.max_cpu is not None and cpu and held.cpu + cpu > quotas.max_cpu + 1e-9:
            raise QuotaExceeded(
                f"tenant {tenant} would use {held.cpu + cpu:g} cores, over its quota of {quotas.max_cpu:g}"
            )
        if (
            quotas.max_memory_mb is not None
            and memory_mb
            and held.memory_mb + memory_mb > quotas.max_memory_mb
        ):
            raise QuotaExceeded(
                f"tenant {tenant} would use {held.memory_mb + memory_mb} MiB of memory, over its quota "
                f"of {quotas.max_memory_mb} MiB"
            )

    def release(self, tenant: str, kind: Kind, cpu: float = 0.0, memory_mb: int = 0) -> None:
        held = self._held.get(tenant)
        if held is None:
            return
        setattr(held, kind, max(0, getattr(held, kind) - 1))
        held.cpu = max(0.0, held.cpu - cpu)
        held.memory_mb = max(0, held.memory_mb - memory_mb)

    def held(self, tenant: str) -> Held:
        return self._held.get(tenant) or Held()


def unlimited() -> QuotaGuard:
    """A guard with no quotas (services built without tenants: unit tests)."""
    return QuotaGuard(lambda _: TenantQuotas())
