"""Sandbox snapshots (async core): a running sandbox's /home/user kept (its processes are not), to
start new sandboxes from (`AsyncSandbox.create(snapshot=…)`), and forks.

    snap = await sbx.create_snapshot(name="after-setup")
    async with AsyncSandbox.create(snapshot=snap.id) as copy: ...
    forks = await sbx.fork(3)                          # sandboxes, or the error of each that failed
    await client.snapshots.delete(snap.id)
"""

from __future__ import annotations

import builtins

from agentcell.client.api import ApiClient, Params, request_body, segment
from agentcell.client.errors import API_ERRORS_BY_CODE, AgentcellAPIError, NotFoundError
from agentcell.protocol.common import STATUS_BY_CODE, ErrorEnvelope
from agentcell.protocol.sandboxes import SandboxInfo
from agentcell.protocol.snapshots import (
    ForkList,
    SandboxFork,
    SandboxSnapshotCreate,
    SandboxSnapshotInfo,
    SandboxSnapshotList,
)

ForkOutcome = SandboxInfo | AgentcellAPIError
"""one fork: the sandbox it started, or the error that kept it from starting (not raised)"""


async def take_snapshot(api: ApiClient, sandbox_id: str, name: str | None) -> SandboxSnapshotInfo:
    body = request_body(SandboxSnapshotCreate, {} if name is None else {"name": name})
    path = f"/v1/sandboxes/{segment(sandbox_id)}/snapshots"
    return await api.call_model(SandboxSnapshotInfo, "POST", path, json=body)


async def fork_sandbox(
    api: ApiClient, sandbox_id: str, count: int, timeout_s: int | None
) -> builtins.list[ForkOutcome]:
    fields = {"count": count, "timeout_s": timeout_s}
    body = request_body(SandboxFork, {key: value for key, value in fields.items() if value is not None})
    path = f"/v1/sandboxes/{segment(sandbox_id)}/fork"
    forks = (await api.call_model(ForkList, "POST", path, json=body)).forks
    return [fork.sandbox if fork.sandbox is not None else _error(fork.error) for fork in forks]


def _error(envelope: ErrorEnvelope | None) -> AgentcellAPIError:
    if envelope is None:
        return AgentcellAPIError("the server answered a fork with neither a sandbox nor an error")
    cls = API_ERRORS_BY_CODE.get(envelope.code, AgentcellAPIError)
    status = STATUS_BY_CODE.get(envelope.code)
    return cls(envelope.message, code=envelope.code, status=status, request_id=envelope.request_id)


class AsyncSnapshots:
    """`client.snapshots`: the tenant's sandbox snapshots. Take one with `create` (or
    `AsyncSandbox.create_snapshot`); start a sandbox from one with `AsyncSandbox.create(snapshot=id)`."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api

    async def create(self, sandbox_id: str, *, name: str | None = None) -> SandboxSnapshotInfo:
        """Keep the running sandbox's /home/user as a snapshot (it keeps running). A `name` one of
        the tenant's snapshots already has gives that snapshot (same id) the new files."""
        return await take_snapshot(self._api, sandbox_id, name)

    async def list(
        self, *, sandbox_id: str | None = None, name: str | None = None, page_size: int | None = None
    ) -> builtins.list[SandboxSnapshotInfo]:
        """All of the tenant's snapshots, oldest first; of one sandbox, or with one name, when
        given. Fetched a page of `page_size` at a time (None: the server's largest, 100);
        `list_page` gets one page."""
        found: builtins.list[SandboxSnapshotInfo] = []
        token: str | None = None
        while True:
            page = await self.list_page(sandbox_id=sandbox_id, name=name, limit=page_size, next_token=token)
            found += page.snapshots
            if page.next_token is None:
                return found
            token = page.next_token

    async def list_page(
        self,
        *,
        sandbox_id: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        next_token: str | None = None,
    ) -> SandboxSnapshotList:
        """One page of at most `limit` (1-100; None: 100) of them; pass its `next_token` to get the
        next page (it is None on the last)."""
        given = {"sandbox_id": sandbox_id, "name": name, "limit": limit, "next_token": next_token}
        params: Params = {key: value for key, value in given.items() if value is not None and value != ""}
        return await self._api.call_model(SandboxSnapshotList, "GET", "/v1/snapshots", params=params)

    async def get(self, snapshot_id: str) -> SandboxSnapshotInfo:
        """NotFoundError if there is none of this id (or it is another tenant's)."""
        return await self._api.call_model(SandboxSnapshotInfo, "GET", f"/v1/snapshots/{segment(snapshot_id)}")

    async def delete(self, snapshot_id: str) -> bool:
        """Delete the snapshot and its files (sandboxes started from it keep theirs). False when
        there was no such snapshot."""
        try:
            await self._api.call("DELETE", f"/v1/snapshots/{segment(snapshot_id)}")
        except NotFoundError:
            return False
        return True
