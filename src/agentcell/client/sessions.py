"""Sessions (async core): a client's binding to one instance of a function, as a resource.

    session = await client.sessions.create("chat", key="alice-1", ttl_s=3600)   # bound now
    # requests with `x-agentcell-session-id: alice-1` reach session.instance_id until it ends
    await client.sessions.renew(session.id, idle_timeout_s=7200)
    await client.sessions.delete(session.id)

States: pending → (restoring →) active ⇄ idle → ended (`end_reason` says why). A function deployed
with `workspace.persist` keeps each session's files in object storage: `snapshot()` saves them now.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping

from agentcell.client.api import ApiClient, Params, request_body, segment
from agentcell.client.errors import InvalidArgumentError, NotFoundError
from agentcell.protocol.sessions import SessionCreate, SessionInfo, SessionList, SessionState, SessionUpdate
from agentcell.protocol.workspaces import SnapshotInfo, WorkspaceInfo, WorkspaceList


class AsyncWorkspaces:
    """`client.workspaces`: the stored session workspaces of the tenant and their usage."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api

    async def list(self) -> WorkspaceList:
        """Every stored workspace, with the tenant's stored bytes and quota."""
        return await self._api.call_model(WorkspaceList, "GET", "/v1/workspaces")

    async def get(self, storage_path: str) -> WorkspaceInfo:
        return await self._api.call_model(WorkspaceInfo, "GET", self._path(storage_path))

    async def delete(self, storage_path: str) -> bool:
        """Drop every snapshot of a workspace (ConflictError while a live session uses it).
        False when there was no such workspace."""
        try:
            await self._api.call("DELETE", self._path(storage_path))
        except NotFoundError:
            return False
        return True

    @staticmethod
    def _path(storage_path: str) -> str:
        return "/v1/workspaces/" + "/".join(segment(part) for part in storage_path.split("/"))


class AsyncSessions:
    """`client.sessions`: the sessions of one server's functions."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api

    async def create(
        self,
        function: str,
        key: str | None = None,
        *,
        ttl_s: int | None = None,
        idle_timeout_s: int | None = None,
        metadata: Mapping[str, str] | None = None,
        workspace: str | None = None,
    ) -> SessionInfo:
        """Open a session and bind it to an instance now (pre-warm), before its first request.
        `key` is what clients will send in the function's affinity header or cookie (generated
        when absent: then it is the session id). ConflictError if the key is live already.
        Unset limits are the function's `session_ttl_s` and `idle_timeout_s`. `workspace` names a
        stored workspace of the tenant to use instead of the one of (function, key)."""
        given = {
            "key": key,
            "ttl_s": ttl_s,
            "idle_timeout_s": idle_timeout_s,
            "metadata": metadata,
            "workspace": workspace,
        }
        body = request_body(SessionCreate, {k: v for k, v in given.items() if v is not None})
        path = f"/v1/functions/{segment(function)}/sessions"
        return await self._api.call_model(SessionInfo, "POST", path, json=body)

    async def get(self, session_id: str) -> SessionInfo:
        """A live session, or an ended one with its `end_reason` (NotFoundError if unknown)."""
        return await self._api.call_model(SessionInfo, "GET", self._path(session_id))

    async def list(
        self,
        function: str | None = None,
        *,
        state: SessionState | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> builtins.list[SessionInfo]:
        """Live sessions, oldest first: of `function` (NotFoundError if there is no such function)
        or of all, in `state`, whose metadata has every given key=value."""
        given = {"metadata": [f"{k}={v}" for k, v in (metadata or {}).items()], "state": state}
        params: Params = {name: value for name, value in given.items() if value}
        path = "/v1/sessions" if function is None else f"/v1/functions/{segment(function)}/sessions"
        return (await self._api.call_model(SessionList, "GET", path, params=params)).sessions

    async def renew(
        self, session_id: str, *, ttl_s: int | None = None, idle_timeout_s: int | None = None
    ) -> SessionInfo:
        """New limits counted from now (longer or shorter); the session keeps its instance. A limit
        not given stays as it is."""
        if ttl_s is None and idle_timeout_s is None:
            raise InvalidArgumentError("renew needs ttl_s, idle_timeout_s or both")
        given = {"ttl_s": ttl_s, "idle_timeout_s": idle_timeout_s}
        body = request_body(SessionUpdate, {k: v for k, v in given.items() if v is not None})
        return await self._api.call_model(SessionInfo, "PATCH", self._path(session_id), json=body)

    async def snapshot(self, session_id: str) -> SnapshotInfo:
        """Save the session's workspace to object storage now (only changed files are uploaded)."""
        return await self._api.call_model(SnapshotInfo, "POST", self._path(session_id) + "/snapshot")

    async def delete(self, session_id: str) -> bool:
        """End the session now (its pre-stop hook runs, then its instance is released; an exclusive
        instance is destroyed). False when it had already ended or never existed."""
        try:
            await self._api.call("DELETE", self._path(session_id))
        except NotFoundError:
            return False
        return True

    @staticmethod
    def _path(session_id: str) -> str:
        return f"/v1/sessions/{segment(session_id)}"
