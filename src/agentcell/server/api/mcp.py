"""agentcell's own MCP server at `/mcp` (Streamable HTTP): sandboxes, commands, code and files as
MCP tools, so any MCP client can use agentcell without an SDK.

Tools call the same services as the REST API; their errors reach the client as tool errors with
the API's message. An MCP session belongs to the API key that opened it (`SessionOwners`).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
from collections import OrderedDict, deque
from collections.abc import AsyncIterable, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, TransportSecuritySettings
from mcp_types import ImageContent, TextContent
from pydantic import ValidationError
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentcell.errors import AgentcellError
from agentcell.protocol.code import CodeRun
from agentcell.protocol.commands import CommandRequest
from agentcell.protocol.egress import NetworkPolicy
from agentcell.protocol.files import wire_text
from agentcell.protocol.functions import FunctionConfig, SandboxPublish
from agentcell.protocol.sandboxes import MAX_SANDBOX_PAGE, SandboxCreate, SandboxResume, SandboxTimeout
from agentcell.server.api.publish import Publisher
from agentcell.server.api.sandboxes import sandbox_page
from agentcell.server.auth.principal import current_or_none
from agentcell.server.interpreter.context import CodeContext
from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.sandboxes import SandboxService

MAX_READ_BYTES = 4 << 20
MAX_OUTPUT_CHARS = 256 * 1024
"""of each stream a `run_command` answer keeps: its head and its tail, half each (an agent's
context cannot take more, and the whole output would sit in the server's memory)"""
IMAGE_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
}

MAX_REQUEST_BYTES = DEFAULT_MAX_REQUEST_BODY_SIZE
"""the most one MCP request may be (the transport's limit)"""
TOO_LARGE = (
    f"the request is larger than {MAX_REQUEST_BYTES} bytes, the most an MCP request may be here; "
    "write a larger file through the files API (PUT /v1/sandboxes/{id}/files)"
)
MAX_OWNED_SESSIONS = 20_000  # twice the SDK's own limit on live sessions
SESSION_HEADER = b"mcp-session-id"

Content = TextContent | ImageContent
ToolFn = Callable[..., Awaitable[Any]]
Owner = tuple[str, str]


def build_mcp_server(
    sandboxes: SandboxService, pauses: SandboxPauses, publisher: Publisher
) -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer(
        "agentcell", instructions="Isolated Linux sandboxes: run commands and code, read and write files."
    )

    def tool() -> Callable[[ToolFn], ToolFn]:
        """Register a tool whose agentcell errors reach the client with their message."""

        def register(fn: ToolFn) -> ToolFn:
            @functools.wraps(fn)
            async def translated(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await fn(*args, **kwargs)
                except AgentcellError as exc:
                    raise ToolError(f"{exc.code}: {exc.message}") from exc
                except ValidationError as exc:
                    raise ToolError("; ".join(str(e["msg"]) for e in exc.errors())) from exc

            server.tool()(translated)
            return fn

        return register

    @tool()
    async def create_sandbox(
        template: str = "base",
        timeout_s: int = 300,
        pause_at_timeout: bool = False,
        auto_resume: bool = False,
        egress: str = "none",
        allow: list[str] | None = None,
    ) -> dict[str, Any]:
        """Start a sandbox (user `user`, home /home/user); it ends after timeout_s unless renewed.
        pause_at_timeout: it is paused instead (its /home/user kept, its processes ended);
        auto_resume (with pause_at_timeout): a paused sandbox resumes by itself when a tool
        works in it. egress: its network, "none" (default), "open" (the public internet, for pip
        and npm installs) or "allowlist" (only the hosts in allow, e.g. ["pypi.org"])."""
        request = SandboxCreate(
            template=template,
            timeout_s=timeout_s,
            on_timeout="pause" if pause_at_timeout else "kill",
            auto_resume=auto_resume,
            network=_network(egress, allow, None),
        )
        return (await sandboxes.create(request)).info().model_dump(mode="json")

    @tool()
    async def set_sandbox_network(
        sandbox_id: str, egress: str, allow: list[str] | None = None, deny: list[str] | None = None
    ) -> dict[str, Any]:
        """Replace a running sandbox's network now: egress "none", "open" (deny: IPs or CIDRs it
        still may not reach) or "allowlist" (allow: hosts, *.domains, IPs or CIDRs, each with an
        optional :port). Connections the new policy does not allow are cut."""
        network = _network(egress, allow, deny)
        return (await sandboxes.set_network(sandbox_id, network)).info().model_dump(mode="json")

    @tool()
    async def pause_sandbox(sandbox_id: str) -> dict[str, Any]:
        """Save the sandbox's /home/user and stop it: it costs nothing while paused, and its
        processes end. resume_sandbox starts it again with its files."""
        return (await pauses.pause(sandbox_id)).sandbox.info().model_dump(mode="json")

    @tool()
    async def resume_sandbox(sandbox_id: str, timeout_s: int | None = None) -> dict[str, Any]:
        """Start a paused sandbox again, same id, its /home/user restored (timeout_s: its new
        timeout, else the one it was created with)."""
        valid = SandboxResume(timeout_s=timeout_s)  # (as the REST route: 1 s to 7 days)
        return (await pauses.resume(sandbox_id, valid.timeout_s)).info().model_dump(mode="json")

    @tool()
    async def list_sandboxes(next_token: str | None = None, paused: bool = False) -> dict[str, Any]:
        """Running sandboxes (paused ones with paused=true), oldest first, 100 at a time: pass the
        answer's next_token (null on the last page) to get the next 100."""
        page, token = sandbox_page(
            pauses, {}, "paused" if paused else "running", MAX_SANDBOX_PAGE, next_token
        )
        return {"sandboxes": [s.info().model_dump(mode="json") for s in page], "next_token": token}

    @tool()
    async def kill_sandbox(sandbox_id: str) -> str:
        """Stop a sandbox now (or delete a paused one); its files are gone."""
        await pauses.kill(sandbox_id)
        return f"sandbox {sandbox_id} killed"

    @tool()
    async def set_sandbox_timeout(sandbox_id: str, timeout_s: int) -> dict[str, Any]:
        """The sandbox ends timeout_s seconds from now."""
        valid = SandboxTimeout(timeout_s=timeout_s)  # as the REST route: a deadline past it broke the sandbox
        return sandboxes.set_timeout(sandbox_id, valid.timeout_s).info().model_dump(mode="json")

    @tool()
    async def run_command(sandbox_id: str, command: str, timeout_s: float = 60) -> dict[str, Any]:
        """Run a bash command in the sandbox; returns its stdout, stderr and exit code."""
        request = CommandRequest(cmd=command, timeout_s=timeout_s)
        await pauses.wake(sandbox_id)
        process = await sandboxes.start_process(sandbox_id, request)
        out = {"stdout": HeadAndTail(MAX_OUTPUT_CHARS), "stderr": HeadAndTail(MAX_OUTPUT_CHARS)}
        result: dict[str, Any] = {}
        async for event in sandboxes.run_foreground(process, sandbox_id):
            data = event.model_dump()
            if data.get("type") in out:
                out[data["type"]].add(data.get("data", ""))
            elif data.get("type") == "end":
                result = data
        return {name: kept.text() for name, kept in out.items()} | result

    @tool()
    async def run_code(
        sandbox_id: str, code: str, language: str = "python", timeout_s: float = 60
    ) -> list[Content]:
        """Run code in the sandbox's stateful context of `language` (python, javascript, bash):
        variables survive between calls; charts come back as images."""
        request = CodeRun(code=code, language=language, timeout_s=timeout_s)
        await pauses.wake(sandbox_id)
        context = await sandboxes.code(sandbox_id).for_run(request)
        await context.ensure_started()
        return await _run_code(context, request)

    @tool()
    async def read_file(sandbox_id: str, path: str) -> Content:
        """A file's content: text, or an image for png/jpeg/gif/webp (at most 4 MiB)."""
        await pauses.wake(sandbox_id)
        data = await _read(sandboxes.files(sandbox_id).read(path))
        kind = IMAGE_TYPES.get(path.rsplit(".", 1)[-1].lower())
        if kind is not None:
            return ImageContent(type="image", data=base64.b64encode(data).decode(), mime_type=kind)
        return TextContent(type="text", text=data.decode("utf-8", errors="replace"))

    @tool()
    async def write_file(sandbox_id: str, path: str, text: str) -> dict[str, Any]:
        """Create or replace a text file (parents are made); a request holds at most 4 MiB."""
        await pauses.wake(sandbox_id)
        entry = await sandboxes.files(sandbox_id).write(path, _one(text.encode()))
        return {"path": entry.path, "size": entry.size}

    @tool()
    async def list_files(sandbox_id: str, path: str = "/home/user", depth: int = 1) -> list[dict[str, Any]]:
        """Entries under a directory (depth 1..16)."""
        await pauses.wake(sandbox_id)
        entries = await sandboxes.files(sandbox_id).list(path, depth)
        return [{"path": wire_text(e.path), "type": e.type, "size": e.size} for e in entries]

    @tool()
    async def publish_sandbox(
        sandbox_id: str, function: str, command: str, path: str = "/home/user", port: int = 8080
    ) -> dict[str, Any]:
        """Publish what you built: deploy the directory `path` of the sandbox as function
        `function` (a new version if it exists), a service at /fn/<function>/ that starts on
        demand. `command` runs with bash in /code (a read-only copy of the directory's files)
        and must serve HTTP on $PORT (port). The sandbox runs on, unchanged."""
        await pauses.wake(sandbox_id)
        request = SandboxPublish(function=function, path=path, config=FunctionConfig(cmd=command, port=port))
        return (await publisher.publish(sandbox_id, request)).model_dump(mode="json")

    return server


def mcp_routes(server: MCPServer[Any]) -> list[BaseRoute]:
    """The `/mcp` route of the server's Streamable HTTP app, for the control plane's router. The
    Host check is off: the gateway in front answers for whatever name the operator gives it."""
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    routes = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security).routes
    return [
        Route(
            r.path,
            SessionOwners(r.app),
            methods=r.methods,
            name=r.name,
            include_in_schema=r.include_in_schema,
        )
        if isinstance(r, Route) and r.path == "/mcp"
        else r
        for r in routes
    ]


class SessionOwners:
    """The `/mcp` app behind a check that an MCP session is used only by the API key that opened
    it (its tenant and key id): the session's tools act as that key, so any other key naming the
    session gets 404, the answer for a session this server does not have.

    Owners are learnt from the 2xx answers that issue an `Mcp-Session-Id` and forgotten on a 2xx
    DELETE or a 404; past `max_sessions` the oldest is forgotten (its session then answers 404
    and its client initializes a new one: an id with no owner is never served).
    """

    def __init__(self, app: ASGIApp, max_sessions: int = MAX_OWNED_SESSIONS) -> None:
        self._app = app
        self._max_sessions = max_sessions
        self._owners: OrderedDict[str, Owner] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        send = _explaining_too_large(send)
        principal = current_or_none()
        owner = (principal.tenant, principal.key_id) if principal is not None else ("", "")
        session_id = _session_id(scope)
        if session_id is None:
            await self._app(scope, receive, functools.partial(self._learn, owner, send))
        elif self._owners.get(session_id) != owner:
            await _session_not_found(send)
        else:
            await self._app(
                scope, receive, functools.partial(self._follow, session_id, scope["method"], send)
            )

    async def _learn(self, owner: Owner, send: Send, message: Message) -> None:
        if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
            issued = _session_id(message)
            if issued is not None:
                self._owners[issued] = owner
                while len(self._owners) > self._max_sessions:
                    self._owners.popitem(last=False)
        await send(message)

    async def _follow(self, session_id: str, method: str, send: Send, message: Message) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            if status == 404 or (method == "DELETE" and 200 <= status < 300):
                self._owners.pop(session_id, None)
        await send(message)


def _session_id(scope_or_message: Scope | Message) -> str | None:
    for name, value in scope_or_message.get("headers", []):
        if name.lower() == SESSION_HEADER:
            return bytes(value).decode("latin-1").strip()
    return None


async def _session_not_found(send: Send) -> None:
    await _json_rpc_error(send, 404, "Session not found: initialize a new one")


def _explaining_too_large(send: Send) -> Send:
    """`send`, but the transport's bare text 413 for an oversized request becomes a JSON-RPC
    error that gives the limit and the way round it."""
    replaced = False

    async def explained(message: Message) -> None:
        nonlocal replaced
        if message["type"] == "http.response.start" and message["status"] == 413:
            replaced = True
            await _json_rpc_error(send, 413, TOO_LARGE)
        elif not replaced:
            await send(message)

    return explained


async def _json_rpc_error(send: Send, status: int, text: str) -> None:
    error = {"code": -32600, "message": text}  # Invalid Request
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _run_code(context: CodeContext, request: CodeRun) -> list[Content]:
    """The answer of one execution. A call cancelled (notifications/cancelled) interrupts it: the
    kernel went on running the code, and the context's next run waited behind it. Shielded, as
    the cancellation would cut the interrupt short too (anyio cancels every await after it)."""
    ended = False
    try:
        async with aclosing(context.run(request.code, request.env, request.timeout_s)) as events:
            content = await _code_content(events)
            ended = True
            return content
    finally:
        if not ended:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await context.interrupt()


async def _code_content(events: AsyncIterable[Any]) -> list[Content]:
    """The answer of `run_code`: each stream's text as one item, its head and tail kept as
    `run_command` keeps them (one item per output message made a flood of prints answer tens of
    thousands of items and megabytes), then results and errors in order."""
    streams = {"stdout": HeadAndTail(MAX_OUTPUT_CHARS), "stderr": HeadAndTail(MAX_OUTPUT_CHARS)}
    content: list[Content] = []
    async for event in events:
        kind = event.type
        if kind in streams:
            streams[kind].add(event.text)
        elif kind == "result":
            content.append(_result_content(event.data))
        elif kind == "error":
            content.append(TextContent(type="text", text=f"{event.name}: {event.value}\n{event.traceback}"))
        elif kind == "end" and event.status != "ok":
            content.append(TextContent(type="text", text=f"execution ended: {event.status}"))
    texts = [(kind, kept.text()) for kind, kept in streams.items()]
    output = [TextContent(type="text", text=f"[{kind}] {text}") for kind, text in texts if text]
    return output + content or [TextContent(type="text", text="")]


def _result_content(data: dict[str, Any]) -> Content:
    if "image/png" in data:
        return ImageContent(type="image", data=data["image/png"], mime_type="image/png")
    return TextContent(type="text", text=str(data.get("text/plain", data)))


class HeadAndTail:
    """The first and the last `limit // 2` characters of a stream, and how many fell between.
    The tail is kept as pieces, trimmed whole, so that each piece added costs its own length
    (joining it to a kept tail cost the tail's, for every one of a flood of small prints)."""

    def __init__(self, limit: int) -> None:
        self._half = limit // 2
        self._head = ""
        self._tail: deque[str] = deque()
        self._tail_chars = 0
        self._past_head = 0

    def add(self, text: str) -> None:
        if len(self._head) < self._half:
            room = self._half - len(self._head)
            self._head += text[:room]
            text = text[room:]
        if not text:
            return
        self._past_head += len(text)
        self._tail.append(text)
        self._tail_chars += len(text)
        while self._tail and self._tail_chars - len(self._tail[0]) >= self._half:
            self._tail_chars -= len(self._tail.popleft())

    def text(self) -> str:
        tail = "".join(self._tail)[-self._half :] if self._half else ""
        dropped = self._past_head - len(tail)
        if not dropped:
            return self._head + tail
        marker = f"\n[agentcell: {dropped} characters of output left out here]\n"
        return self._head + marker + tail


async def _read(chunks: AsyncIterable[bytes]) -> bytes:
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > MAX_READ_BYTES:
            raise ValueError(f"the file is larger than {MAX_READ_BYTES} bytes; use the files API")
    return bytes(data)


async def _one(data: bytes) -> AsyncIterable[bytes]:
    yield data


def _network(egress: str, allow: list[str] | None, deny: list[str] | None) -> NetworkPolicy:
    return NetworkPolicy.model_validate({"egress": egress, "allow": allow or [], "deny": deny or []})
