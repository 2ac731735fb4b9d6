"""E2B's control plane (`E2B_API_URL`): create, connect, describe, list, renew, pause, kill
sandboxes, and their metrics.

Routes mirror E2B's REST API (v1 and v2 paths, as the Python SDK ≥2.0 and older ones call them);
answers are built from agentcell's SandboxService and SandboxPauses. A pause is persist-and-stop
(the files of /home/user are kept, memory and processes are not); a connect to a paused sandbox
resumes it with the same id, its files restored before the answer (201), and a connect to a
running one answers 200.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from agentcell.errors import AgentcellError, Conflict, InvalidArgument
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.sandboxes import SandboxCreate
from agentcell.server.api.lean import lean
from agentcell.server.api.paging import after_token, page_token
from agentcell.server.auth.principal import current_or_none
from agentcell.server.e2b.errors import NotImplementedE2b, status_and_message
from agentcell.server.e2b.models import (
    ALL_TRAFFIC,
    CLIENT_ID,
    ENVD_VERSION,
    ConnectE2b,
    ForkE2b,
    NetworkE2b,
    NetworkUpdateE2b,
    PauseE2b,
    SandboxCreateE2b,
    SnapshotE2b,
    TimeoutE2b,
)
from agentcell.server.e2b.registry import TEMPLATE_LABEL, E2bRegistry, our_template
from agentcell.server.scheduler.sandbox_metrics import MetricSample
from agentcell.server.scheduler.sandbox_snapshots import SandboxSnapshot, SandboxSnapshots, is_snapshot_id
from agentcell.server.scheduler.sandboxes import Sandbox

router = APIRouter(tags=["e2b"])
MAX_PAGE = 100
NEXT_TOKEN_HEADER = "x-next-token"
DRIVE_SCOPE = "sandboxes:write"


def registry(request: Request) -> E2bRegistry:
    found: E2bRegistry = request.app.state.e2b
    return found


def _time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def sandbox_reply(reg: E2bRegistry, sandbox: Sandbox) -> dict[str, Any]:
    template_id = reg.template_id(sandbox)
    return {
        "templateID": template_id,
        "sandboxID": sandbox.id,
        "clientID": CLIENT_ID,
        "alias": template_id,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": reg.token(sandbox.id),
        # a private sandbox's ports need it (the code interpreter's SDK sends it on every call)
        "trafficAccessToken": reg.traffic.token(sandbox.id),
        "domain": None,
    }


def listed_reply(reg: E2bRegistry, sandbox: Sandbox) -> dict[str, Any]:
    req = sandbox.request
    return {
        "templateID": reg.template_id(sandbox),
        "alias": reg.template_id(sandbox),
        "sandboxID": sandbox.id,
        "clientID": CLIENT_ID,
        "startedAt": _time(sandbox.created_at),
        "endAt": _time(sandbox.expires_at),
        "cpuCount": max(1, round(req.cpu)),
        "memoryMB": req.memory_mb,
        "diskSizeMB": req.disk_mb,
        "state": "paused" if sandbox.state == "paused" else "running",
        "envdVersion": ENVD_VERSION,
        "metadata": dict(req.metadata),
    }


def detail_reply(reg: E2bRegistry, sandbox: Sandbox) -> dict[str, Any]:
    token = {"envdAccessToken": reg.token(sandbox.id)} if _may_drive() else {}  # optional in E2B's schema
    return {
        **listed_reply(reg, sandbox),
        **token,
        "allowInternetAccess": sandbox.request.network.egress != "none",
        "lifecycle": {"onTimeout": sandbox.request.on_timeout, "autoResume": sandbox.request.auto_resume},
        "network": _network_reply(reg, sandbox),
    }


def _network_reply(reg: E2bRegistry, sandbox: Sandbox) -> dict[str, Any]:
    reply: dict[str, Any] = {"allowPublicTraffic": reg.allows_public_traffic(sandbox)}
    if sandbox.request.ports_host is not None:
        reply["maskRequestHost"] = sandbox.request.ports_host
    return reply


def _may_drive() -> bool:
    """Whether the caller's key may have a sandbox's envd token: with it, envd runs commands and
    writes files, so a `sandboxes:read` key that describes a sandbox does not get it."""
    principal = current_or_none()
    return principal is None or principal.allows(DRIVE_SCOPE)


def _network(allow_out: list[str], deny_out: list[str], allow_internet_access: bool | None) -> NetworkPolicy:
    """E2B's default is internet access on: `open` (through the node's egress proxy), unless the
    request says `allow_internet_access: false`, denies all traffic (`denyOut: [ALL_TRAFFIC]`) or
    names an allowlist (which, as on E2B, takes precedence over the deny); other `denyOut`
    entries are what `open` may not reach."""
    if allow_out:
        return NetworkPolicy(egress="allowlist", allow=allow_out)
    if allow_internet_access is False or ALL_TRAFFIC in deny_out:
        return NetworkPolicy()
    return NetworkPolicy(egress="open", deny=deny_out)


def _created_network(body: SandboxCreateE2b) -> NetworkPolicy:
    network = body.network or NetworkE2b()
    return _network(network.allow_out, network.deny_out, body.allow_internet_access)


def _create_request(body: SandboxCreateE2b) -> SandboxCreate:
    reason = body.unsupported()
    if reason:
        raise InvalidArgument(reason)
    return SandboxCreate.model_validate(
        {
            "template": our_template(body.template_id),
            "timeout_s": body.timeout,
            "metadata": body.metadata,
            "env": body.env_vars,
            "network": _created_network(body),
            "on_timeout": "pause" if body.auto_pause else "kill",
            "auto_resume": body.resumes_itself,
            "ports": "private" if body.network and body.network.allow_public_traffic is False else "public",
            "ports_host": body.network.mask_request_host if body.network else None,
        }
    )


@router.post("/sandboxes", status_code=201)
@router.post("/v2/sandboxes", status_code=201)
@lean
async def create_sandbox(request: Request, body: SandboxCreateE2b) -> dict[str, Any]:
    reg = registry(request)
    if is_snapshot_id(body.template_id):  # a snapshot's id is its template's (template names have no '_')
        sandbox = await snapshots(request).start(body.template_id, _from_snapshot(body))
    else:
        sandbox = await reg.sandboxes.create(_create_request(body))
    reg.remember(sandbox, body.template_id)
    return sandbox_reply(reg, sandbox)


@router.post("/sandboxes/{sandbox_id}/connect")
@router.post("/v2/sandboxes/{sandbox_id}/connect")
@router.post("/sandboxes/{sandbox_id}/resume")
@lean
async def connect_sandbox(request: Request, sandbox_id: str, body: ConnectE2b | None = None) -> JSONResponse:
    """A running sandbox answers 200 (its timeout extended when `timeout` is longer than what is
    left); a paused one is resumed (with `timeout`, else its own) and answers 201."""
    reg = registry(request)
    timeout = body.timeout if body is not None else None
    paused = reg.pauses.paused(sandbox_id)
    sandbox = await reg.pauses.resume(sandbox_id, timeout, running_ok=True)
    if paused is not None:  # resumed, by this request or by one that got the sandbox's lock first
        reg.remember(sandbox, paused.labels.get(TEMPLATE_LABEL, sandbox.request.template))
        return JSONResponse(sandbox_reply(reg, sandbox), status_code=201)
    if timeout is not None and timeout > sandbox.expires_at - _now(reg):
        reg.sandboxes.set_timeout(sandbox_id, timeout)
    return JSONResponse(sandbox_reply(reg, sandbox), status_code=200)


def _now(reg: E2bRegistry) -> float:
    return reg.clock.now()


def _live(reg: E2bRegistry, sandbox_id: str) -> Sandbox:
    """The running sandbox, or 409 for a paused one (404 for any other)."""
    if reg.pauses.paused(sandbox_id) is not None:
        raise Conflict(f"sandbox {sandbox_id} is paused; resume it first (Sandbox.connect)")
    return reg.sandboxes.running(sandbox_id)


@router.get("/sandboxes/{sandbox_id}")
@lean
async def get_sandbox(request: Request, sandbox_id: str) -> dict[str, Any]:
    reg = registry(request)
    paused = reg.pauses.paused(sandbox_id)
    return detail_reply(reg, paused.sandbox if paused is not None else reg.sandboxes.running(sandbox_id))


@router.delete("/sandboxes/{sandbox_id}", status_code=204)
@lean
async def kill_sandbox(request: Request, sandbox_id: str) -> Response:
    """Ends a running sandbox; deletes a paused one with its saved files."""
    await registry(request).pauses.kill(sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
@lean
async def set_timeout(request: Request, sandbox_id: str, body: TimeoutE2b) -> Response:
    reg = registry(request)
    reg.sandboxes.set_timeout(_live(reg, sandbox_id).id, body.timeout)
    return Response(status_code=204)


@router.put("/sandboxes/{sandbox_id}/network", status_code=204)
async def update_network(request: Request, sandbox_id: str, body: NetworkUpdateE2b) -> Response:
    """The running sandbox's egress rules replaced at once (`Sandbox.update_network`)."""
    reason = body.unsupported()
    if reason:
        raise InvalidArgument(reason)
    network = _network(body.allow_out, body.deny_out, body.allow_internet_access)
    reg = registry(request)
    await reg.sandboxes.set_network(_live(reg, sandbox_id).id, network)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/refreshes", status_code=204)
@lean
async def refresh(request: Request, sandbox_id: str) -> Response:
    """Keep-alive of older SDKs: the sandbox must exist; its deadline is not moved."""
    _live(registry(request), sandbox_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/pause", status_code=204)
async def pause_sandbox(request: Request, sandbox_id: str, body: PauseE2b | None = None) -> Response:
    """Persist-and-stop: /home/user is saved, the instance stops (its processes end). 409 when it
    is paused already (the SDK's pause() then returns False)."""
    await registry(request).pauses.pause(sandbox_id)
    return Response(status_code=204)


def _metadata_filter(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    pairs = urllib.parse.parse_qsl(text, keep_blank_values=True)
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in pairs}


def _states(text: str | None) -> set[str]:
    states = {s.strip() for s in (text or "running,paused").split(",") if s.strip()}
    unknown = states - {"running", "paused"}
    if unknown:
        raise InvalidArgument(f"state must be running or paused, got {sorted(unknown)}")
    return states


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidArgument(f"startedAfter must be an RFC 3339 time, got {text!r}") from None


def _token(sandbox: Sandbox) -> str:
    return page_token(sandbox.created_at, sandbox.id)


def _filtered(
    reg: E2bRegistry, metadata: str | None, state: str | None, started_after: str | None, template: str | None
) -> list[Sandbox]:
    states = _states(state)
    since = _parse_time(started_after)
    found = [
        s
        for s in reg.pauses.find(_metadata_filter(metadata))
        if ("paused" if s.state == "paused" else s.state) in states
    ]
    if since is not None:
        found = [s for s in found if s.created_at >= since]
    if template:
        found = [s for s in found if template in (reg.template_id(s), s.request.template)]
    return found


@router.get("/sandboxes")
async def list_sandboxes_v1(request: Request, metadata: str | None = None) -> list[dict[str, Any]]:
    reg = registry(request)
    return [listed_reply(reg, s) for s in _filtered(reg, metadata, None, None, None)]


@router.get("/v2/sandboxes")
async def list_sandboxes(
    request: Request,
    metadata: str | None = None,
    state: str | None = None,
    started_after: Annotated[str | None, Query(alias="startedAfter")] = None,
    template: str | None = None,
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> JSONResponse:
    """Sorted by start time, newest first unless `order=asc` (as E2B's API and its SDK's own tests
    expect); a page of `limit`, the next page named by the `x-next-token` header."""
    reg = registry(request)
    found = sorted(
        _filtered(reg, metadata, state, started_after, template), key=lambda s: (s.created_at, s.id)
    )
    if order == "desc":
        found.reverse()
    if next_token:
        mark = after_token(next_token, "nextToken")
        found = [
            s
            for s in found
            if ((s.created_at, s.id) > mark) == (order == "asc") and (s.created_at, s.id) != mark
        ]
    page, rest = found[:limit], found[limit:]
    headers = {NEXT_TOKEN_HEADER: _token(page[-1])} if rest else {}
    return JSONResponse([listed_reply(reg, s) for s in page], headers=headers)


@router.get("/sandboxes/{sandbox_id}/metrics")
async def sandbox_metrics(
    request: Request, sandbox_id: str, start: int | None = None, end: int | None = None
) -> list[dict[str, Any]]:
    """A new sample of the running sandbox, with the earlier ones kept for it, within
    [start, end] (Unix seconds) when given."""
    reg = registry(request)
    samples = await reg.metrics.sample(_live(reg, sandbox_id).id)
    return [
        _metric(m)
        for m in samples
        if (start is None or int(m.at) >= start) and (end is None or int(m.at) <= end)
    ]


def _metric(sample: MetricSample) -> dict[str, Any]:
    return {
        "timestamp": _time(sample.at),
        "timestampUnix": int(sample.at),
        "cpuCount": sample.cpu_count,
        "cpuUsedPct": sample.cpu_used_pct,
        "memUsed": sample.memory_used_bytes,
        "memTotal": sample.memory_total_bytes,
        "memCache": 0,
        "diskUsed": sample.disk_used_bytes,
        "diskTotal": sample.disk_total_bytes,
    }


# -- snapshots and fork (files only: see scheduler/sandbox_snapshots.py) ---------------------------


def snapshots(request: Request) -> SandboxSnapshots:
    found: SandboxSnapshots = request.app.state.snapshots
    return found


def _from_snapshot(body: SandboxCreateE2b) -> Callable[[SandboxCreate], SandboxCreate]:
    """A create from a snapshot: the snapshot's template, resources, env and network, with this
    create's timeout, metadata, env vars (over the snapshot's) and timeout action; private ports
    when either the snapshot's sandbox had them or this create asks for them."""
    reason = body.unsupported()
    if reason:
        raise InvalidArgument(reason)
    private = body.network is not None and body.network.allow_public_traffic is False

    def adjust(taken: SandboxCreate) -> SandboxCreate:
        return SandboxCreate.model_validate(
            {
                **taken.model_dump(),
                "timeout_s": body.timeout,
                "metadata": body.metadata,
                "env": {**taken.env, **body.env_vars},
                "on_timeout": "pause" if body.auto_pause else "kill",
                "auto_resume": body.resumes_itself,
                "ports": "private" if private else taken.ports,
                "ports_host": (body.network and body.network.mask_request_host) or taken.ports_host,
            }
        )

    return adjust


def _snapshot_reply(snapshot: SandboxSnapshot) -> dict[str, Any]:
    name = snapshot.record.name
    return {"snapshotID": snapshot.id, "names": [name] if name else []}


@router.post("/sandboxes/{sandbox_id}/snapshots", status_code=201)
async def create_snapshot(
    request: Request, sandbox_id: str, body: SnapshotE2b | None = None
) -> dict[str, Any]:
    """The running sandbox's files, kept as a snapshot its id names (`Sandbox.create(snapshot_id)`);
    the sandbox keeps running. `memory` changes nothing: processes and kernels are not kept."""
    taken = await snapshots(request).take(sandbox_id, body.name if body is not None else None)
    return _snapshot_reply(taken)


@router.get("/snapshots")
async def list_snapshots(
    request: Request,
    sandbox_id: Annotated[str | None, Query(alias="sandboxID")] = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
    next_token: Annotated[str | None, Query(alias="nextToken")] = None,
) -> JSONResponse:
    """The caller's snapshots, oldest first, a page of `limit` (the next named by `x-next-token`)."""
    after = after_token(next_token, "nextToken") if next_token else None
    page, more = snapshots(request).find_page(sandbox_id or None, name or None, limit, after)
    last = page[-1] if more else None
    headers = {NEXT_TOKEN_HEADER: page_token(last.record.created_at, last.id)} if last else {}
    return JSONResponse([_snapshot_reply(s) for s in page], headers=headers)


@router.delete("/templates/{template_id}", status_code=204)
async def delete_snapshot(request: Request, template_id: str) -> Response:
    """`Sandbox.delete_snapshot(id)`: the SDK deletes a snapshot as a template. Other templates
    are not E2B's to delete here (agentcell's are managed with `agentcell templates`)."""
    if not is_snapshot_id(template_id):
        raise NotImplementedE2b("templates (an E2B-cloud service) are not available on agentcell's E2B API")
    await snapshots(request).delete(template_id)
    return Response(status_code=204)


@router.post("/sandboxes/{sandbox_id}/fork", status_code=201)
async def fork_sandbox(
    request: Request, sandbox_id: str, body: ForkE2b | None = None
) -> list[dict[str, Any]]:
    """One snapshot of the running sandbox, `count` sandboxes started from it: each entry is
    `{"sandbox": …}` or `{"error": {"code", "message"}}` (per fork, as on E2B)."""
    reg = registry(request)
    body = body or ForkE2b()
    template_id = reg.template_id(reg.pauses.get(sandbox_id))  # a paused one: the fork's Conflict
    forks = await snapshots(request).fork(sandbox_id, body.count, body.timeout)
    return [_fork_reply(reg, fork, template_id) for fork in forks]


def _fork_reply(reg: E2bRegistry, fork: Sandbox | AgentcellError, template_id: str) -> dict[str, Any]:
    if isinstance(fork, AgentcellError):
        status, _code, message = status_and_message(fork)
        return {"error": {"code": status, "message": message}}
    reg.remember(fork, template_id)
    return {"sandbox": sandbox_reply(reg, fork)}


CLOUD_ONLY = ("/templates", "/v2/templates", "/v3/templates", "/snapshots", "/volumes", "/secrets")


def _refuse(feature: str) -> Callable[[], Awaitable[Response]]:
    async def refuse() -> Response:
        raise NotImplementedE2b(f"{feature} is not available on agentcell's E2B API")

    return refuse


for _prefix in CLOUD_ONLY:
    router.add_api_route(
        _prefix + "{rest:path}",
        _refuse(f"{_prefix.rsplit('/', 1)[-1]} (an E2B-cloud service)"),
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        include_in_schema=False,
    )
