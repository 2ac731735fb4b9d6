"""Usage (async core): metered active and idle time, CPU, memory and storage, with their cost.

report = await client.usage.get(since=datetime(2026, 11, 1), by="session")
text = await client.usage.csv(by="function")
"""

from __future__ import annotations

from datetime import datetime

from agentcell.client.api import ApiClient, Params
from agentcell.protocol.usage import UsageGrouping, UsageReport


class AsyncUsage:
    """`client.usage`: the ledger of the server's tenant, grouped and priced."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api

    async def get(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        by: UsageGrouping = "session",
        tenant: str | None = None,
    ) -> UsageReport:
        """Usage that started in [since, until) (default: the last day), grouped `by` tenant,
        function, session, sandbox or kind; costs from the server's price table. `tenant`: the
        key's own by default; an admin key may name another, or `*` for all."""
        params = _params(since, until, by, tenant)
        return await self._api.call_model(UsageReport, "GET", "/v1/usage", params=params)

    async def csv(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        by: UsageGrouping = "session",
        tenant: str | None = None,
    ) -> str:
        params = {**_params(since, until, by, tenant), "format": "csv"}
        return (await self._api.call("GET", "/v1/usage", params=params)).text


def _params(since: datetime | None, until: datetime | None, by: UsageGrouping, tenant: str | None) -> Params:
    given = {
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "tenant": tenant,
    }
    return {"by": by, **{k: v for k, v in given.items() if v is not None}}
