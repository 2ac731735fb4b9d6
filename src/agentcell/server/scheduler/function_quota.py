"""FunctionQuota: how many functions a tenant has deployed (`max_functions`) and how much of the
node's disk their code takes (`max_code_mb`), checked as it deploys.

What a tenant stores is read from the code directories on disk, so it holds across restarts with
no record of its own. A version's directory never changes once in place, so each is measured once
(known by its inode and change time: a version number reused after a crash is a new directory).
A tenant with either quota deploys one function at a time: each deploy then sees the code of the
one before in place, and no new name slips past `max_functions` beside another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

from agentcell.errors import QuotaExceeded
from agentcell.protocol.tenants import TenantQuotas
from agentcell.server.auth.names import split
from agentcell.server.scheduler.code import STAGING_PREFIX, CodeBudget, code_bytes

VersionKey = tuple[str, int, int]
"""a version directory's path, inode and change time (ns)"""


class FunctionQuota:
    def __init__(
        self, code_root: Path, quotas: Callable[[str], TenantQuotas], deployed: Callable[[], Iterable[str]]
    ) -> None:
        """`code_root`: where the scheduler keeps code (`<function>/v<N>`); `quotas`: a tenant's;
        `deployed`: the qualified names of the functions deployed now, every tenant's."""
        self._code_root = code_root
        self._quotas = quotas
        self._deployed = deployed
        self._locks: dict[str, asyncio.Lock] = {}
        self._sizes: dict[str, dict[VersionKey, int]] = {}

    @contextlib.asynccontextmanager
    async def deploying(self, name: str) -> AsyncIterator[CodeBudget | None]:
        """Around Scheduler.deploy of function `name` (qualified): refuses a new function past
        max_functions (QuotaExceeded), and yields the deploy's code budget for the unpacker to
        charge (None: no code quota)."""
        tenant = split(name)[0]
        if not _is_limited(self._quotas(tenant)):
            yield None
            return
        async with self._locks.setdefault(tenant, asyncio.Lock()):
            quotas = self._quotas(tenant)  # as they are now, after any wait
            _check_count(tenant, name, self._deployed(), quotas.max_functions)
            yield await self._budget(tenant, quotas.max_code_mb)

    def check_count(self, name: str) -> None:
        """Early, before the upload is read: a new function past max_functions is refused at
        once (`deploying` checks again, the check that counts)."""
        tenant = split(name)[0]
        _check_count(tenant, name, self._deployed(), self._quotas(tenant).max_functions)

    async def stored_bytes(self, tenant: str) -> int:
        """What the tenant's function code takes on disk now (every version kept, counted as the
        unpacker counts it; deploys in flight left out)."""
        known = self._sizes.get(tenant, {})
        sizes = await asyncio.to_thread(_measure, self._code_root, tenant, known)
        self._sizes[tenant] = sizes
        return sum(sizes.values())

    async def _budget(self, tenant: str, quota_mb: int | None) -> CodeBudget | None:
        if quota_mb is None:
            return None
        budget = CodeBudget(tenant, quota_mb << 20, await self.stored_bytes(tenant))
        if budget.stored_bytes >= budget.quota_bytes:
            raise budget.exceeded()  # (no code fits: refused before the unpack starts)
        return budget


def _is_limited(quotas: TenantQuotas) -> bool:
    return quotas.max_functions is not None or quotas.max_code_mb is not None


def _check_count(tenant: str, name: str, deployed: Iterable[str], limit: int | None) -> None:
    """A redeploy is always counted in; a new name only below the limit."""
    if limit is None:
        return
    mine = {n for n in deployed if split(n)[0] == tenant}
    if name in mine or len(mine) < limit:
        return
    raise QuotaExceeded(
        f"tenant {tenant} is at its quota of {limit} functions (max_functions); delete one it no "
        "longer needs (DELETE /v1/functions/{name}), redeploy one of its functions instead, or "
        "raise the quota"
    )


def _measure(code_root: Path, tenant: str, known: dict[VersionKey, int]) -> dict[VersionKey, int]:
    """Each of the tenant's version directories with its size (from `known` when unchanged)."""
    sizes: dict[VersionKey, int] = {}
    for version_dir in _version_dirs(code_root, tenant):
        with contextlib.suppress(FileNotFoundError):  # removed meanwhile: an old version, a delete
            st = os.stat(version_dir, follow_symlinks=False)
            key = (str(version_dir), st.st_ino, st.st_ctime_ns)
            sizes[key] = known[key] if key in known else code_bytes(version_dir)
    return sizes


def _version_dirs(code_root: Path, tenant: str) -> Iterator[Path]:
    """`<function>/<version>` directories of the tenant's functions (the names are qualified, see
    auth/names.py); a deploy's staging directory is not code yet."""
    with contextlib.suppress(FileNotFoundError):
        for function_dir in code_root.iterdir():
            if split(function_dir.name)[0] != tenant:
                continue
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                yield from [v for v in function_dir.iterdir() if not v.name.startswith(STAGING_PREFIX)]
