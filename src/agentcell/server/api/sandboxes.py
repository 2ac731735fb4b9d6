"""/v1/sandboxes: create (from a template or a snapshot), list (a page at a time), get, renew,
pause, resume, kill.

A sandbox created with `"ports": "private"` answers on its ports' hosts only requests that carry its
`traffic_token` (scheduler/traffic.py). The token is in the answers of keys that may write to the
sandbox (create, get, resume, pause, timeout), never of read-only keys, nor in lists.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import ValidationError

from agentcell.errors import Conflict, InvalidArgument
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.sandboxes import (
    MAX_SANDBOX_PAGE,
    SandboxCreate,
    SandboxInfo,
    SandboxList,
    SandboxResume,
    SandboxState,
    SandboxTimeout,
)
from agentcell.server.api.deps import Pauses, SandboxControl, Sandboxes, Snapshots, Traffic
from agentcell.server.api.errors import describe_validation
from agentcell.server.api.lean import lean
from agentcell.server.api.paging import after_token, page_token
from agentcell.server.auth.principal import current_or_none
from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.sandbox_snapshots import Adjust
from agentcell.server.scheduler.sandboxes import Sandbox
from agentcell.server.scheduler.traffic import PrivateTraffic

router = APIRouter(prefix="/v1/sandboxes", tags=["sandboxes"])
SandboxId = Annotated[str, "sandbox id"]
WRITE_SCOPE = "sandboxes:write"


def described(sandbox: Sandbox, traffic: PrivateTraffic, *, with_token: bool) -> SandboxInfo:
    """Its info; a private sandbox's with its traffic token when `with_token`."""
    info = sandbox.info()
    if sandbox.request.ports == "public" and not traffic.is_private(sandbox.id):
        return info  # (private without saying so in its request: resumed from a record of 366ec23)
    token = traffic.token(sandbox.id) if with_token else None
    return info.model_copy(update={"ports": "private", "traffic_token": token})


def answer(sandbox: Sandbox, traffic: PrivateTraffic) -> SandboxInfo:
    """The token only to a key that may write to the sandbox: with it, its ports are open to
    whoever holds it (not its envd or code interpreter: they take E2B's envd access token)."""
    principal = current_or_none()
    return described(sandbox, traffic, with_token=principal is None or principal.allows(WRITE_SCOPE))


def parse_metadata_filter(pairs: list[str]) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"metadata filter must look like key=value, got {pair!r}")
        wanted[key] = value
    return wanted


@router.post("", status_code=201)
@lean
async def create_sandbox(
    body: SandboxCreate, sandboxes: Sandboxes, snapshots: Snapshots, traffic: Traffic
) -> SandboxInfo:
    if body.snapshot is not None:
        sandbox = await snapshots.start(body.snapshot, from_snapshot(body))
    else:
        sandbox = await sandboxes.create(body)
    return answer(sandbox, traffic)


def from_snapshot(body: SandboxCreate) -> Adjust:
    """The request of a sandbox started from a snapshot: the snapshot's (its source's), with the
    fields this create gives over it; env merged over the snapshot's, ports private when either
    asks, never less disk than the files were taken from."""
    given = body.model_dump(include=body.model_fields_set - {"snapshot"})

    def adjust(taken: SandboxCreate) -> SandboxCreate:
        if body.disk_mb < taken.disk_mb and "disk_mb" in given:
            raise InvalidArgument(
                f"disk_mb must be at least the snapshot's {taken.disk_mb} (its files come from a "
                f"sandbox of that size), got {body.disk_mb}; leave it out to keep the snapshot's"
            )
        fields = {**taken.model_dump(), **given, "snapshot": None}
        fields["env"] = {**taken.env, **body.env}
        fields["ports"] = "private" if "private" in (taken.ports, body.ports) else "public"
        try:
            return SandboxCreate.model_validate(fields)
        except ValidationError as exc:  # e.g. code_kernel with the snapshot's too small memory_mb
            raise InvalidArgument(f"with snapshot {body.snapshot}: {describe_validation(exc)}") from None

    return adjust


@router.get("")
async def list_sandboxes(
    pauses: Pauses,
    traffic: Traffic,
    metadata: Annotated[list[str], Query(max_length=64, description="key=value; all must match")] = [],  # noqa: B006
    state: SandboxState | None = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_SANDBOX_PAGE, description="at most this many")
    ] = MAX_SANDBOX_PAGE,
    next_token: Annotated[str | None, Query(description="the page after the one that gave it")] = None,
) -> SandboxList:
    """The caller's sandboxes, live and paused, oldest first, a page of `limit`; the answer's
    `next_token` (null on the last page) gets the next one."""
    page, token = sandbox_page(pauses, parse_metadata_filter(metadata), state, limit, next_token)
    return SandboxList(sandboxes=[described(s, traffic, with_token=False) for s in page], next_token=token)


def sandbox_page(
    pauses: SandboxPauses,
    metadata: dict[str, str],
    state: SandboxState | None,
    limit: int,
    next_token: str | None,
) -> tuple[list[Sandbox], str | None]:
    """A page of the caller's sandboxes (REST and MCP lists) and the `next_token` of the page
    after it (None: this is the last). Raises InvalidArgument for a token this server did not
    issue. Only the page is for describing: a thousand described in one answer held the event
    loop 14-22 ms."""
    after = after_token(next_token, "next_token") if next_token else None
    page, more = pauses.find_page(metadata, state, limit, after)
    return page, page_token(page[-1].created_at, page[-1].id) if more else None


@router.get("/{sandbox_id}")
@lean
async def get_sandbox(sandbox_id: str, pauses: Pauses, traffic: Traffic) -> SandboxInfo:
    return answer(pauses.get(sandbox_id), traffic)


@router.post("/{sandbox_id}/timeout")
@lean
async def set_sandbox_timeout(
    sandbox_id: str, body: SandboxTimeout, sandboxes: SandboxControl, pauses: Pauses, traffic: Traffic
) -> SandboxInfo:
    if pauses.paused(sandbox_id) is not None:
        raise Conflict(f"sandbox {sandbox_id} is paused; resume it first (POST .../resume takes a timeout_s)")
    return answer(sandboxes.set_timeout(sandbox_id, body.timeout_s), traffic)


@router.put("/{sandbox_id}/network")
async def set_sandbox_network(
    sandbox_id: str, body: NetworkPolicy, sandboxes: SandboxControl, traffic: Traffic
) -> SandboxInfo:
    """Replace a running sandbox's egress policy at once: connections its old policy allowed and
    the new one does not are cut; commands started from now on get the new proxy settings."""
    return answer(await sandboxes.set_network(sandbox_id, body), traffic)


@router.post("/{sandbox_id}/pause")
async def pause_sandbox(sandbox_id: str, pauses: Pauses, traffic: Traffic) -> SandboxInfo:
    """Save /home/user to object storage and stop the sandbox (its processes end)."""
    return answer((await pauses.pause(sandbox_id)).sandbox, traffic)


@router.post("/{sandbox_id}/resume")
async def resume_sandbox(
    sandbox_id: str, pauses: Pauses, traffic: Traffic, body: SandboxResume | None = None
) -> SandboxInfo:
    """Start a paused sandbox again, same id, its files restored before this answers (a private
    one private again before it runs: SandboxPauses.resuming; its token new after a restart)."""
    sandbox = await pauses.resume(sandbox_id, body.timeout_s if body is not None else None)
    return answer(sandbox, traffic)


@router.delete("/{sandbox_id}", status_code=204)
@lean
async def kill_sandbox(sandbox_id: str, pauses: Pauses) -> Response:
    """End a running sandbox, or delete a paused one with its saved files."""
    await pauses.kill(sandbox_id)
    return Response(status_code=204)
