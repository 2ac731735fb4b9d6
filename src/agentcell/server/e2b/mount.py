"""The E2B-compatible API as one ASGI app, mounted by the control plane at `/e2b`.

A request that names a sandbox (the `E2b-Sandbox-Id` header, or the gateway's `/_sandbox/{port}-{id}`
prefix for the host form) goes to that sandbox's envd (port 49983) or code interpreter (49999);
every other request is E2B's control plane. Each part answers errors in its own E2B shape.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

from fastapi import APIRouter, FastAPI
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from agentcell.errors import AgentcellError
from agentcell.server.api.lean import install_lean_routes
from agentcell.server.api.observability import FASTAPI_TELEMETRY_OFF
from agentcell.server.auth.principal import acting_as
from agentcell.server.clock import Clock
from agentcell.server.e2b import control, envd, interpreter
from agentcell.server.e2b.errors import (
    envd_error,
    install_control,
    install_envd,
    install_interpreter,
    interpreter_error,
)
from agentcell.server.e2b.registry import E2bRegistry
from agentcell.server.e2b.target import (
    ENVD_PORT,
    HOST_PREFIX,
    JUPYTER_PORT,
    SCOPE_KEY,
    SIGNED_FILES,
    Target,
    from_headers,
    parse_label,
)
from agentcell.server.scheduler.sandbox_metrics import SandboxMetrics
from agentcell.server.scheduler.sandbox_pause import SandboxPauses
from agentcell.server.scheduler.sandboxes import SandboxService
from agentcell.server.scheduler.terminals import TerminalService

ErrorRender = Callable[[Request, Exception], Response]

PREFIX = "/e2b"
API_KEY_HEADERS = (b"x-api-key", b"authorization")
FILE_OPERATIONS = {"GET": "read", "POST": "write"}
"""what a signed /files URL is signed for, by the method that uses it"""
SignedCall = tuple[QueryParams, str]
"""a signed /files call's query, and the operation its signature must be for"""


def _part(registry: E2bRegistry, *routers: APIRouter, terminals: TerminalService | None = None) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, telemetry=FASTAPI_TELEMETRY_OFF)
    app.state.e2b = registry
    app.state.envd = envd.Services(registry, terminals)
    for router in routers:
        app.include_router(router)
    install_lean_routes(app, routers)
    return app


class E2bMount:
    """Routes each request to the control plane, envd or the code interpreter."""

    def __init__(
        self,
        sandboxes: SandboxService,
        clock: Clock,
        pauses: SandboxPauses,
        metrics: SandboxMetrics,
        terminals: TerminalService | None = None,
        envd_secret: bytes | None = None,
    ) -> None:
        self.registry = E2bRegistry(sandboxes, clock, pauses, metrics, envd_secret)
        self.control = _part(self.registry, control.router)
        self.envd = _part(self.registry, envd.router, terminals=terminals)
        self.interpreter = _part(self.registry, interpreter.router)
        install_control(self.control)
        install_envd(self.envd)
        install_interpreter(self.interpreter)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        scope, target = self._resolve(scope)
        if target is None:
            if not self._has_api_key(scope):
                await _reply(
                    send, 401, {"code": 401, "message": "send an API key (X-API-Key); any value works"}
                )
                return
            await self.control(scope, await _buffered(receive), send)
        elif target.port == ENVD_PORT:
            with acting_as(None):  # authorized by the sandbox's token, whatever its tenant
                if await self._woken(scope, receive, send, target, envd_error):
                    await self.envd({**scope, SCOPE_KEY: target}, receive, send)
        elif target.port == JUPYTER_PORT:
            with acting_as(None), contextlib.suppress(interpreter.StreamBroken):
                if await self._woken(scope, receive, send, target, interpreter_error):
                    await self.interpreter({**scope, SCOPE_KEY: target}, receive, send)
        else:
            await _drain(receive)
            message = f"The sandbox {target.sandbox_id} port {target.port} is not open through this path"
            await _reply(send, 502, {"code": 502, "message": message, "sandboxId": target.sandbox_id})

    async def _woken(
        self, scope: Scope, receive: Receive, send: Send, target: Target, render: ErrorRender
    ) -> bool:
        """Resume the paused sandbox an envd or code interpreter call is for, if it was created
        with `auto_resume` and the call carries one of its tokens (any other call goes on to its
        own checks). False when the resume failed: the call was answered why, in `render`'s shape."""
        if target.sandbox_id and self.registry.pauses.paused(target.sandbox_id) is None:
            return True  # (every call to a running sandbox: nothing more is read)
        signed = _signed_file_call(scope)
        sandbox_id = target.sandbox_id or self._paused_signer(signed)
        if not sandbox_id or self.registry.pauses.paused(sandbox_id) is None:
            return True
        if not self._carries_a_token(scope, sandbox_id, signed):
            return True
        try:
            await self.registry.pauses.wake(sandbox_id)
        except AgentcellError as exc:
            await _drain(receive)
            await render(Request(scope), exc)(scope, receive, send)
            return False
        return True

    def _carries_a_token(self, scope: Scope, sandbox_id: str, signed: SignedCall | None) -> bool:
        """One of the sandbox's tokens in the headers, or a signed file URL of it (a download
        link handed to a browser carries nothing else)."""
        if self.registry.drives(sandbox_id, dict(scope["headers"])):
            return True
        return signed is not None and self.registry.signs(sandbox_id, *signed)

    def _paused_signer(self, signed: SignedCall | None) -> str:
        """The paused auto-resume sandbox whose signature a file URL naming no sandbox carries
        (as the SDK builds them with E2B_SANDBOX_URL), or ''."""
        if signed is None:
            return ""
        for sandbox in self.registry.pauses.find({}, "paused"):
            if sandbox.request.auto_resume and self.registry.signs(sandbox.id, *signed):
                return sandbox.id
        return ""

    @staticmethod
    def _resolve(scope: Scope) -> tuple[Scope, Target | None]:
        root: str = scope.get("root_path", "")
        path: str = scope["path"]
        rest = path[len(root) :] if path.startswith(root) else path
        if rest.startswith(HOST_PREFIX):
            label, _, tail = rest[len(HOST_PREFIX) :].partition("/")
            target = parse_label(label)
            if target is not None:
                new_path = root + "/" + tail
                return {**scope, "path": new_path, "raw_path": new_path.encode()}, target
        if rest == SIGNED_FILES:
            return {**scope, "path": root + "/files", "raw_path": (root + "/files").encode()}, Target(
                "", ENVD_PORT
            )
        return scope, from_headers(dict(scope["headers"]))

    @staticmethod
    def _has_api_key(scope: Scope) -> bool:
        headers = dict(scope["headers"])
        return any(headers.get(name, b"").strip() for name in API_KEY_HEADERS)


def _signed_file_call(scope: Scope) -> SignedCall | None:
    """A /files call's query and the operation a signature in it must be for, or None."""
    operation = FILE_OPERATIONS.get(scope["method"])
    if operation is None or scope["path"] != scope.get("root_path", "") + "/files":
        return None
    query = QueryParams(scope["query_string"])
    return (query, operation) if "signature" in query else None


async def _buffered(receive: Receive) -> Receive:
    """The whole (small, JSON) body read before the app answers, so that no answer — a 404 for an
    unknown route included — can come before the body has been taken off the connection."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return receive
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    return replay


async def _drain(receive: Receive) -> None:
    """Read the request body before answering early (the connection is then reusable)."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


async def _reply(send: Send, status: int, body: dict[str, object]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def e2b_app(
    sandboxes: SandboxService,
    clock: Clock,
    pauses: SandboxPauses,
    metrics: SandboxMetrics,
    terminals: TerminalService | None = None,
    envd_secret: bytes | None = None,
) -> E2bMount:
    """The mount; its `registry.traffic` is what the gateway's E2bPorts checks private sandboxes by."""
    return E2bMount(sandboxes, clock, pauses, metrics, terminals, envd_secret)
