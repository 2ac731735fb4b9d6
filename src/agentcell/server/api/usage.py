"""/v1/usage: metered usage and its cost, grouped and filtered by time, as JSON or CSV."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from agentcell.errors import InvalidArgument, PermissionDenied
from agentcell.protocol.usage import UsageGrouping, UsageReport
from agentcell.server.api.deps import Sandboxes, Scheduler
from agentcell.server.auth.principal import current
from agentcell.server.auth.tenants import TenantService
from agentcell.server.scheduler.usage import PriceTable, report, to_csv

router = APIRouter(tags=["usage"])
DEFAULT_WINDOW = timedelta(days=1)


@router.get("/v1/usage", response_model=UsageReport, responses={200: {"content": {"text/csv": {}}}})
async def get_usage(
    request: Request,
    scheduler: Scheduler,
    sandboxes: Sandboxes,
    since: Annotated[datetime | None, Query(description="ISO 8601; default: a day before `until`")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601; default: now")] = None,
    by: UsageGrouping = "session",
    format: Literal["json", "csv"] = "json",
    tenant: Annotated[str | None, Query(description="admin keys only: another tenant, or * for all")] = None,
) -> Response:
    """Usage periods that started in [since, until). Periods are at most the metering interval
    long (AGENTCELL_USAGE_INTERVAL_S); what is still running is counted up to now (computed for
    the answer, not written: reading usage changes nothing)."""
    end = _aware(until) if until else datetime.now(UTC)
    start = _aware(since) if since else _day_before(end)
    if start >= end:
        raise InvalidArgument(f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
    rows = await scheduler.usage(
        _tenant_asked(request, tenant), start.timestamp(), end.timestamp(), [sandboxes]
    )
    prices: PriceTable = request.app.state.prices
    usage = report(rows, by, start.timestamp(), end.timestamp(), prices)
    if format == "csv":
        return Response(to_csv(usage), media_type="text/csv")
    return Response(usage.model_dump_json(), media_type="application/json")


def _tenant_asked(request: Request, tenant: str | None) -> str | None:
    """The caller's tenant; an admin may name another one (existing or deleted), or `*` for all (None).
    Anyone else naming another tenant is refused whether it exists or not, so nothing is told."""
    principal = current()
    if tenant is None or tenant == principal.tenant:
        return principal.tenant
    if not principal.is_admin:
        raise PermissionDenied(
            f"only admin keys may read other tenants' usage; this key (id {principal.key_id}) is "
            f"tenant {principal.tenant!r}'s: leave out tenant= to read its own"
        )
    if tenant == "*":
        return None
    tenants: TenantService = request.app.state.tenants
    return tenants.with_history(tenant)  # NotFound names it


def _day_before(end: datetime) -> datetime:
    try:
        return end - DEFAULT_WINDOW
    except OverflowError:  # until= in the first day of year 1
        raise InvalidArgument(f"until ({end.isoformat()}) has no day before it; give since= too") from None


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
