"""`AsyncSandbox`: one sandbox and the connection pool that talks to it (the async core).

    async with AsyncSandbox.create() as sbx:          # killed, and the pool closed, on exit
        result = await sbx.commands.run("echo hi")

`create` and `connect` return a `SandboxOpening`: await it for a sandbox you will `kill()` and
`aclose()` yourself, or enter it with `async with` (directly or after awaiting).

    snap = await sbx.create_snapshot()                 # its files; it keeps running
    copy = await AsyncSandbox.create(snapshot=snap.id)  # a new sandbox with those files
    forks = await sbx.fork(2)                          # one snapshot, started twice
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Generator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from agentcell.client.api import ApiClient, Params, request_body, segment
from agentcell.client.code import DEFAULT_CODE_TIMEOUT_S, AsyncCode, Callbacks
from agentcell.client.commands import AsyncCommands
from agentcell.client.config import ClientConfig
from agentcell.client.errors import AgentcellAPIError, NotFoundError
from agentcell.client.files import AsyncFiles
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.sandboxes import (
    PortsAccess,
    SandboxCreate,
    SandboxInfo,
    SandboxList,
    SandboxResume,
    SandboxState,
    SandboxTimeout,
)

# only named in annotations: what a sandbox's parts need is imported when a part is first used
if TYPE_CHECKING:
    import httpx

    from agentcell.client.code import Callback, ContextRef, Execution
    from agentcell.protocol.code import CodeContextInfo
    from agentcell.protocol.functions import FunctionInfo
    from agentcell.protocol.snapshots import SandboxSnapshotInfo

S = TypeVar("S", bound="AsyncSandbox")


def network_body(network: NetworkPolicy | Mapping[str, Any] | str | None) -> Any:
    """A network policy as the request carries it; a bare string is the egress kind."""
    if isinstance(network, str):
        return {"egress": network}
    if isinstance(network, NetworkPolicy):
        return network.model_dump(mode="json")
    return network


async def _list_page(
    api: ApiClient,
    metadata: Mapping[str, str] | None,
    state: SandboxState | None,
    limit: int | None,
    next_token: str | None,
) -> SandboxList:
    given = {
        "metadata": [f"{k}={v}" for k, v in (metadata or {}).items()],
        "state": state,
        "limit": limit,
        "next_token": next_token,
    }
    params: Params = {name: value for name, value in given.items() if value not in (None, "", [])}
    return await api.call_model(SandboxList, "GET", "/v1/sandboxes", params=params)


class SandboxOpening(Generic[S]):
    """A sandbox being created or connected to: awaitable, and an async context manager that
    kills the sandbox on exit."""

    def __init__(self, open_: Callable[[], Awaitable[S]]) -> None:
        self._open = open_
        self._sandbox: S | None = None

    def __await__(self) -> Generator[Any, None, S]:
        return self._opened().__await__()

    async def _opened(self) -> S:
        return await self._open()

    async def __aenter__(self) -> S:
        self._sandbox = await self._open()
        return self._sandbox

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sandbox is not None:
            await self._sandbox.__aexit__(exc_type, exc, tb)


class AsyncSandbox:
    """One sandbox. Owns its ApiClient (one connection pool): `aclose()` closes the pool, `kill()`
    ends the sandbox, leaving an `async with` block does both."""

    def __init__(
        self, info: SandboxInfo, api: ApiClient, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.info = info
        self._api = api
        self._transport = transport  # a fork's own ApiClient uses it too
        self._path = f"/v1/sandboxes/{segment(info.id)}"
        self.commands = AsyncCommands(api, info.id)
        self.files = AsyncFiles(api, info.id)
        self._code = AsyncCode(api, info.id)

    @property
    def id(self) -> str:
        return self.info.id

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} template={self.info.template!r}>"

    @classmethod
    def create(
        cls: type[S],
        template: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        cpu: float | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        timeout_s: int | None = None,
        network: NetworkPolicy | Mapping[str, Any] | str | None = None,
        code_kernel: bool | None = None,
        on_timeout: Literal["kill", "pause"] | None = None,
        auto_resume: bool | None = None,
        ports: PortsAccess | None = None,
        ports_host: str | None = None,
        snapshot: str | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> SandboxOpening[S]:
        """Start a sandbox. Unset values take the server's defaults (template "base", 1 cpu,
        512 MiB memory, 1024 MiB disk, ending 300 s from now). `api_url` falls back to
        AGENTCELL_URL then http://127.0.0.1:8700; `api_key` to AGENTCELL_API_KEY. `network` is the
        egress policy: "none" (default), "open", or {"egress": "allowlist", "allow": [...]}.
        `code_kernel=True` starts the default Python kernel before returning (first run_code fast).
        `on_timeout="pause"` pauses the sandbox at its timeout instead of ending it (see `pause`);
        with `auto_resume=True` a paused sandbox resumes when work reaches it (a command, code, a
        file operation, a request to one of its ports), running at least 5 minutes again.
        `ports="private"`: its ports' hosts (`{port}-{id}.{domain}`) answer only requests with
        `info.traffic_token` in the `e2b-traffic-access-token` header; `ports_host` is the Host
        header those requests arrive with (`"localhost:${PORT}"`: what dev servers accept).
        `snapshot` (a snapshot's id, not with `template`) starts from a snapshot
        (`create_snapshot`): its template, resources, env, network and /home/user files, the
        values given here over them (env merged)."""
        given = {
            "template": template,
            "env": env,
            "metadata": metadata,
            "cpu": cpu,
            "memory_mb": memory_mb,
            "disk_mb": disk_mb,
            "timeout_s": timeout_s,
            "network": network_body(network),
            "code_kernel": code_kernel,
            "on_timeout": on_timeout,
            "auto_resume": auto_resume,
            "ports": ports,
            "ports_host": ports_host,
            "snapshot": snapshot,
        }
        body = request_body(SandboxCreate, {k: v for k, v in given.items() if v is not None})
        config = ClientConfig.resolve(api_url, api_key, request_timeout_s)

        async def open_() -> S:
            return await cls._open(config, transport, "POST", "/v1/sandboxes", body)

        return SandboxOpening(open_)

    @classmethod
    def connect(
        cls: type[S],
        sandbox_id: str,
        *,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> SandboxOpening[S]:
        """Attach to a running sandbox by id (NotFoundError if there is none)."""
        config = ClientConfig.resolve(api_url, api_key, request_timeout_s)

        async def open_() -> S:
            return await cls._open(config, transport, "GET", f"/v1/sandboxes/{segment(sandbox_id)}", None)

        return SandboxOpening(open_)

    @classmethod
    def resume(
        cls: type[S],
        sandbox_id: str,
        *,
        timeout_s: int | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> SandboxOpening[S]:
        """Start a paused sandbox again: same id, its /home/user files restored (its processes and
        code state were not kept). `timeout_s` replaces the timeout it was created with.
        ConflictError if it is not paused, NotFoundError if there is no such sandbox."""
        config = ClientConfig.resolve(api_url, api_key, request_timeout_s)
        body = request_body(SandboxResume, {} if timeout_s is None else {"timeout_s": timeout_s})
        path = f"/v1/sandboxes/{segment(sandbox_id)}/resume"

        async def open_() -> S:
            return await cls._open(config, transport, "POST", path, body)

        return SandboxOpening(open_)

    @classmethod
    async def _open(
        cls: type[S],
        config: ClientConfig,
        transport: httpx.AsyncBaseTransport | None,
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> S:
        api = ApiClient(config, transport=transport)
        try:
            info = await api.call_model(SandboxInfo, method, path, json=body)
        except BaseException:
            await api.aclose()
            raise
        return cls(info, api, transport=transport)

    @staticmethod
    async def list(
        *,
        metadata: Mapping[str, str] | None = None,
        state: SandboxState | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        page_size: int | None = None,
    ) -> builtins.list[SandboxInfo]:
        """All sandboxes whose metadata has every given key=value (and in `state`, when given),
        oldest first. Fetched a page of `page_size` at a time (None: the server's largest, 100);
        `list_page` gets one page."""
        api = ApiClient(ClientConfig.resolve(api_url, api_key, request_timeout_s), transport=transport)
        found: builtins.list[SandboxInfo] = []
        token: str | None = None
        try:
            while True:
                page = await _list_page(api, metadata, state, page_size, token)
                found += page.sandboxes
                if page.next_token is None:
                    return found
                token = page.next_token
        finally:
            await api.aclose()

    @staticmethod
    async def list_page(
        *,
        metadata: Mapping[str, str] | None = None,
        state: SandboxState | None = None,
        limit: int | None = None,
        next_token: str | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
        request_timeout_s: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> SandboxList:
        """One page of at most `limit` (1-100; None: 100) of them; pass its `next_token` to get the
        next page (it is None on the last). A sandbox started or ended between two pages neither
        shifts nor repeats the next."""
        api = ApiClient(ClientConfig.resolve(api_url, api_key, request_timeout_s), transport=transport)
        try:
            return await _list_page(api, metadata, state, limit, next_token)
        finally:
            await api.aclose()

    async def get_info(self) -> SandboxInfo:
        """The sandbox as the server sees it now (also refreshes `self.info`)."""
        self.info = await self._api.call_model(SandboxInfo, "GET", self._path)
        return self.info

    async def is_running(self) -> bool:
        try:
            return (await self.get_info()).state == "running"
        except NotFoundError:
            return False

    async def set_timeout(self, timeout_s: int) -> SandboxInfo:
        """End the sandbox `timeout_s` seconds from now (sooner or later than before)."""
        body = request_body(SandboxTimeout, {"timeout_s": timeout_s})
        self.info = await self._api.call_model(SandboxInfo, "POST", f"{self._path}/timeout", json=body)
        return self.info

    async def update_network(self, network: NetworkPolicy | Mapping[str, Any] | str) -> SandboxInfo:
        """Replace the running sandbox's egress policy at once ("none", "open", or {"egress":
        "allowlist", "allow": [...]}): connections the new one refuses are cut; commands started
        from now on get its proxy settings, running ones keep theirs."""
        body = request_body(NetworkPolicy, network_body(network))
        self.info = await self._api.call_model(SandboxInfo, "PUT", f"{self._path}/network", json=body)
        return self.info

    async def publish(
        self, function: str, *, path: str = "/home/user", packages: bool = True, **settings: Any
    ) -> FunctionInfo:
        """Deploy `path`, a directory of this sandbox, as the next version of function `function`
        (made if new), served by the gateway at `client.functions.url(function)`: its files become
        the instances' read-only /code, where `cmd` runs with bash and serves HTTP on $PORT (or
        `stdio` names a stdio MCP server). `settings` are `client.functions.deploy`'s keywords
        (`cmd`, `env`, `min_warm`, `affinity`, ...); the template is the sandbox's unless given.
        `packages`: what was installed at run time (~/.local: `pip install`, `npm -g`) goes
        along, to /code/.local (PYTHONUSERBASE, PATH and NODE_PATH find it there). The sandbox
        runs on. The version remembers where it came from: `info.config.published_from` (sandbox
        id, path, template, metadata, time)."""
        from agentcell.client.functions import config_fields  # (its wire models, when first used)
        from agentcell.protocol.functions import FunctionInfo, SandboxPublish

        fields = {"function": function, "path": path, "packages": packages, "config": config_fields(settings)}
        body = request_body(SandboxPublish, fields)
        return await self._api.call_model(FunctionInfo, "POST", f"{self._path}/publish", json=body)

    async def pause(self) -> SandboxInfo:
        """Save the sandbox's /home/user to object storage and stop it (state `paused`; its
        processes and code state end). Resume it with `AsyncSandbox.resume(id)`, or kill it."""
        self.info = await self._api.call_model(SandboxInfo, "POST", f"{self._path}/pause")
        return self.info

    async def create_snapshot(self, name: str | None = None) -> SandboxSnapshotInfo:
        """Keep the sandbox's /home/user as a snapshot, to start sandboxes from (`create(snapshot=
        id)`); the sandbox keeps running (frozen only while its files are read). Processes and code
        state are not kept. A `name` one of the tenant's snapshots already has gives that snapshot
        (same id) the new files. Snapshots are kept until deleted (`client.snapshots.delete`)."""
        from agentcell.client.snapshots import take_snapshot  # its wire models, when first used

        return await take_snapshot(self._api, self.id, name)

    async def fork(
        self: S, count: int = 1, *, timeout_s: int | None = None
    ) -> builtins.list[S | AgentcellAPIError]:
        """`count` (1-20) new sandboxes with this one's request and files, as of now (one snapshot,
        deleted once they have started; this sandbox keeps running). Each fork is a sandbox object
        with its own pool (kill or aclose it, or use it in `async with`), or the AgentcellAPIError
        that kept it from starting, returned, not raised: one failing does not undo the others.
        `timeout_s`: their timeout (default: this sandbox's at create)."""
        from agentcell.client.snapshots import fork_sandbox  # its wire models, when first used

        forks = await fork_sandbox(self._api, self.id, count, timeout_s)
        return [fork if isinstance(fork, AgentcellAPIError) else self._sibling(fork) for fork in forks]

    def _sibling(self: S, info: SandboxInfo) -> S:
        """Another sandbox of the same server and key, with a connection pool of its own."""
        api = ApiClient(self._api.config, transport=self._transport)
        return type(self)(info, api, transport=self._transport)

    async def kill(self) -> bool:
        """End the sandbox now. False when it had already ended and was gone."""
        try:
            await self._api.call("DELETE", self._path)
        except NotFoundError:
            return False
        return True

    async def run_code(
        self,
        code: str,
        *,
        context: ContextRef | None = None,
        language: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = DEFAULT_CODE_TIMEOUT_S,
        on_stdout: Callback | None = None,
        on_stderr: Callback | None = None,
        on_result: Callback | None = None,
        on_error: Callback | None = None,
    ) -> Execution:
        """Run code in `context` (default: the sandbox's default context of `language`, python
        unless given), state kept between calls. `env` applies to this execution only. After
        `timeout_s` (None: no limit) the code is interrupted and the Execution says `timed_out`.
        Output reaches the callbacks as it comes; an exception is `Execution.error`, not raised."""
        callbacks = Callbacks(on_stdout, on_stderr, on_result, on_error)
        return await self._code.run(
            code, context=context, language=language, env=env, timeout_s=timeout_s, callbacks=callbacks
        )

    async def create_code_context(
        self, language: str = "python", *, cwd: str | None = None, env: Mapping[str, str] | None = None
    ) -> CodeContextInfo:
        """A new context (its own kernel, started on first use): python, javascript or bash."""
        return await self._code.create_context(language, cwd, env)

    async def list_code_contexts(self) -> builtins.list[CodeContextInfo]:
        return await self._code.list_contexts()

    async def restart_code_context(self, context: ContextRef) -> CodeContextInfo:
        """A fresh kernel for the context; its state is lost."""
        return await self._code.restart_context(context)

    async def interrupt_code_context(self, context: ContextRef) -> None:
        """Interrupt what the context runs (SIGINT); the kernel and its state survive."""
        await self._code.interrupt_context(context)

    async def remove_code_context(self, context: ContextRef) -> None:
        await self._code.remove_context(context)

    async def aclose(self) -> None:
        """Close the connection pool; the sandbox keeps running until killed or its timeout."""
        await self._api.aclose()

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.kill()
        finally:
            await self.aclose()
