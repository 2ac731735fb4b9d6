"""Functions (async core): deploy code that serves HTTP on `$PORT`, then get, list and delete.

    info = await client.functions.deploy("chat", "./my-agent", cmd="python3 app.py", min_warm=2)
    client.functions.url("chat")        # http://127.0.0.1:8700/fn/chat/ : the gateway

Every deploy makes a new version; sessions already bound to an older one finish on it.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from agentcell.client.api import ApiClient, request_body, segment
from agentcell.client.code_archive import deploy_body, opened_archive
from agentcell.client.errors import InvalidArgumentError, NotFoundError
from agentcell.client.transfer import LocalPath, ProgressCallback, new_boundary
from agentcell.protocol.functions import (
    AffinityKind,
    FunctionConfig,
    FunctionInfo,
    FunctionList,
    FunctionName,
    Hook,
    StdioProcessMode,
    WorkspaceConfig,
)

FUNCTION_NAME: TypeAdapter[str] = TypeAdapter(FunctionName)
HookSpec = str | Hook
"""A hook: its command (run with the server's default deadline, 30 s) or a `Hook(cmd, timeout_s)`."""


class AsyncFunctions:
    """`client.functions`: the functions of one server."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api

    def url(self, name: str) -> str:
        """Where the gateway serves the function: `{api_url}/fn/{name}/` (no request is made)."""
        return f"{self._api.config.api_url}/fn/{segment(name)}/"

    async def deploy(
        self,
        name: str,
        code: LocalPath,
        *,
        cmd: str | None = None,
        stdio: str | None = None,
        stdio_process: StdioProcessMode | None = None,
        port: int | None = None,
        template: str | None = None,
        env: Mapping[str, str] | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        affinity: AffinityKind | None = None,
        session_header: str | None = None,
        cookie_name: str | None = None,
        sessions_per_instance: int | None = None,
        session_ttl_s: int | None = None,
        idle_timeout_s: int | None = None,
        disable_session_id_reuse: bool | None = None,
        min_warm: int | None = None,
        max_instances: int | None = None,
        concurrency_per_instance: int | None = None,
        initialize: HookSpec | None = None,
        pre_stop: HookSpec | None = None,
        ready_timeout_s: float | None = None,
        request_timeout_s: float | None = None,
        metadata: Mapping[str, str] | None = None,
        workspace: WorkspaceConfig | None = None,
        on_progress: ProgressCallback | None = None,
        on_pack_progress: ProgressCallback | None = None,
    ) -> FunctionInfo:
        """Deploy `code` (a directory, packed on the fly, or a .tar / .tar.gz of one) as a new
        version of function `name`, created if new. `cmd` runs with bash in /code, the read-only
        code, and must serve HTTP on $PORT; or `stdio` names a stdio MCP server, which agentcell
        serves over Streamable HTTP and legacy SSE (a process per MCP session, or with
        `stdio_process="shared"` one per instance for all its sessions). Unset values
        take the server's defaults (see FunctionConfig): affinity "header" on
        x-agentcell-session-id, one session per instance, 6 h session TTL, 15 min idle timeout,
        no warm instances. `on_pack_progress` gets byte counts as files are packed (from a worker
        thread), `on_progress` as the archive is sent."""
        settings = {
            "cmd": cmd,
            "stdio": stdio,
            "stdio_process": stdio_process,
            "port": port,
            "template": template,
            "env": env,
            "cpu": cpu,
            "memory_mb": memory_mb,
            "disk_mb": disk_mb,
            "affinity": affinity,
            "session_header": session_header,
            "cookie_name": cookie_name,
            "sessions_per_instance": sessions_per_instance,
            "session_ttl_s": session_ttl_s,
            "idle_timeout_s": idle_timeout_s,
            "disable_session_id_reuse": disable_session_id_reuse,
            "min_warm": min_warm,
            "max_instances": max_instances,
            "concurrency_per_instance": concurrency_per_instance,
            "initialize": initialize,
            "pre_stop": pre_stop,
            "ready_timeout_s": ready_timeout_s,
            "request_timeout_s": request_timeout_s,
            "metadata": metadata,
            "workspace": workspace,
        }
        body = request_body(FunctionConfig, config_fields(settings))
        return await self._upload(name, code, body, on_progress, on_pack_progress)

    async def deploy_config(
        self,
        name: str,
        code: LocalPath,
        config: FunctionConfig,
        *,
        on_progress: ProgressCallback | None = None,
        on_pack_progress: ProgressCallback | None = None,
    ) -> FunctionInfo:
        """Deploy with a whole FunctionConfig, e.g. new code under the config of the version now
        live: `deploy_config(name, "./v2", (await functions.get(name)).config)`."""
        return await self._upload(name, code, config.model_dump(mode="json"), on_progress, on_pack_progress)

    async def _upload(
        self,
        name: str,
        code: LocalPath,
        config: dict[str, Any],
        progress: ProgressCallback | None,
        pack_progress: ProgressCallback | None,
    ) -> FunctionInfo:
        check_name(name)  # before packing: a refusal after a long upload would waste it
        async with opened_archive(code, pack_progress) as archive:
            body = deploy_body(new_boundary(), json.dumps(config).encode(), archive, progress)
            headers = {"content-type": body.content_type, "content-length": str(body.content_length)}
            return await self._api.call_model(
                FunctionInfo, "PUT", self._path(name), content=body.chunks, headers=headers
            )

    async def get(self, name: str) -> FunctionInfo:
        """The function's live version and counts (NotFoundError if there is none)."""
        return await self._api.call_model(FunctionInfo, "GET", self._path(name))

    async def list(self) -> builtins.list[FunctionInfo]:
        """Every function, by name."""
        return (await self._api.call_model(FunctionList, "GET", "/v1/functions")).functions

    async def delete(self, name: str) -> bool:
        """End the function's sessions and instances and forget it. False when there was none."""
        try:
            await self._api.call("DELETE", self._path(name))
        except NotFoundError:
            return False
        return True

    @staticmethod
    def _path(name: str) -> str:
        return f"/v1/functions/{segment(name)}"


def check_name(name: str) -> None:
    try:
        FUNCTION_NAME.validate_python(name)
    except ValidationError:
        raise InvalidArgumentError(
            "function name must be 1-63 lowercase letters, digits or '-', starting with a letter; "
            f"got {name!r}"
        ) from None


def config_fields(settings: Mapping[str, Any]) -> dict[str, Any]:
    """FunctionConfig's fields from `deploy`'s keywords (`publish` takes them too); None is unset."""
    given = dict(settings)
    affinity = (given.pop(key, None) for key in ("affinity", "session_header", "cookie_name"))
    given["affinity"] = affinity_fields(*affinity)
    for hook in ("initialize", "pre_stop"):
        given[hook] = hook_fields(given.get(hook))
    if isinstance(workspace := given.get("workspace"), WorkspaceConfig):
        given["workspace"] = workspace.model_dump(mode="json")
    return {key: value for key, value in given.items() if value is not None}


def affinity_fields(
    kind: AffinityKind | None, session_header: str | None, cookie_name: str | None
) -> dict[str, str] | None:
    """The `affinity` object, or None for the server's default (a header on x-agentcell-session-id).
    A header name only means something to `header` affinity, a cookie name to `cookie`."""
    if session_header is not None and kind not in (None, "header"):
        raise InvalidArgumentError(f"session_header applies to affinity 'header', not {kind!r}")
    if cookie_name is not None and kind != "cookie":
        raise InvalidArgumentError("cookie_name needs affinity='cookie'")
    given = {"kind": kind, "header": session_header, "cookie": cookie_name}
    fields = {k: v for k, v in given.items() if v is not None}
    return fields or None


def hook_fields(hook: HookSpec | None) -> dict[str, Any] | None:
    if hook is None:
        return None
    if isinstance(hook, str):
        return {"cmd": hook}
    return hook.model_dump(exclude_unset=True)
