"""Error answers in the shapes E2B's SDKs map to their own exception types.

* control plane: `{"code": <status>, "message"}` — 401 AuthenticationException, 404 NotFound,
  429 RateLimitException, 503 ServiceBusyException, anything else SandboxException;
* envd RPC: Connect errors `{"code": "<connect code>", "message"}` with Connect's status;
* envd `/files`, `/health`: `{"code": <status>, "message"}` (507 NotEnoughSpaceException);
* code interpreter: the message as text (404 NotFoundException, 502 TimeoutException);
* a sandbox that is gone: 502 "The sandbox <id> was not found" everywhere in-sandbox, which the SDK
  turns into SandboxNotRunningException.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from agentcell import errors
from agentcell.protocol.common import STATUS_BY_CODE
from agentcell.server.api.errors import describe_validation, http_error_message
from agentcell.server.e2b.connect import RpcError
from agentcell.server.e2b.registry import SandboxGone

log = logging.getLogger(__name__)
INTERNAL_MESSAGE = "the server failed to handle this request; see its log"
Render = Callable[[int, str, str], Response]


class NotImplementedE2b(Exception):
    """An E2B feature agentcell does not have; answered 501 with the reason."""


def status_and_message(exc: Exception, full_disk_status: int = 429) -> tuple[int, str, str]:
    """(HTTP status, Connect code, message) for any exception a route may raise."""
    if isinstance(exc, RpcError):
        return exc.status, exc.code, exc.message
    if isinstance(exc, SandboxGone):
        return 502, "unavailable", str(exc)
    if isinstance(exc, errors.AgentcellError):
        rpc = RpcError.from_domain(exc)
        status = STATUS_BY_CODE.get(exc.code, 500)
        if isinstance(exc, errors.QuotaExceeded):
            status = full_disk_status
        return status, rpc.code, exc.message
    if isinstance(exc, NotImplementedE2b):
        return 501, "unimplemented", str(exc)
    if isinstance(exc, RequestValidationError | ValidationError):
        # a model built inside a route (e.g. the code run from /execute's body) is bad input too
        return 400, "invalid_argument", describe_validation(exc)
    if isinstance(exc, StarletteHTTPException):
        if isinstance(exc.__cause__, errors.AgentcellError):  # ours, wrapped while FastAPI read the body
            return status_and_message(exc.__cause__, full_disk_status)
        code = "unimplemented" if exc.status_code in (404, 405) else "invalid_argument"
        return exc.status_code, code, http_error_message(exc)
    log.exception("unexpected error in the E2B API", exc_info=exc)
    return 500, "internal", INTERNAL_MESSAGE


def _install(app: FastAPI, render: Callable[[Request, Exception], Response]) -> None:
    async def handler(request: Request, exc: Exception) -> Response:
        return render(request, exc)

    # Every expected kind by name: a handler for plain Exception runs in Starlette's outermost
    # middleware, which re-raises after answering (and the connection is then dropped).
    for kind in EXPECTED:
        app.add_exception_handler(kind, handler)
    app.add_exception_handler(Exception, handler)


EXPECTED: tuple[type[Exception], ...] = (
    RpcError,
    SandboxGone,
    NotImplementedE2b,
    errors.AgentcellError,
    RequestValidationError,
    ValidationError,
    StarletteHTTPException,
)


def _gone_extra(exc: Exception) -> dict[str, str]:
    return {"sandboxId": exc.sandbox_id} if isinstance(exc, SandboxGone) else {}


def control_error(request: Request, exc: Exception) -> Response:
    status, _code, message = status_and_message(exc)
    if isinstance(exc, errors.NotRunning):
        status = 404  # E2B has no "ended but known" sandboxes: an ending one is not found
    if isinstance(exc, StarletteHTTPException) and exc.status_code in (404, 405):
        message = (
            f"no E2B API route {request.method} {request.url.path}; requests for a sandbox's envd or "
            "code interpreter need the E2b-Sandbox-Id header"
        )
    headers = _retry_after(exc)
    return JSONResponse({"code": status, "message": message}, status_code=status, headers=headers)


def envd_error(request: Request, exc: Exception) -> Response:
    path = request.url.path
    plain_http = path.endswith(("/files", "/health"))
    status, code, message = status_and_message(exc, full_disk_status=507 if plain_http else 429)
    body: dict[str, object] = {"code": status if plain_http else code, "message": message, **_gone_extra(exc)}
    return JSONResponse(body, status_code=status, headers=_retry_after(exc))


def interpreter_error(_: Request, exc: Exception) -> Response:
    status, _code, message = status_and_message(exc)
    return PlainTextResponse(message, status_code=status)


def _retry_after(exc: Exception) -> dict[str, str] | None:
    retry = getattr(exc, "retry_after_s", None)
    return {"retry-after": str(max(1, round(retry)))} if retry else None


def install_control(app: FastAPI) -> None:
    _install(app, control_error)


def install_envd(app: FastAPI) -> None:
    _install(app, envd_error)


def install_interpreter(app: FastAPI) -> None:
    _install(app, interpreter_error)
