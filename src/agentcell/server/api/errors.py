"""The single table from domain errors to HTTP, and the envelope every error answer uses."""

from __future__ import annotations

import contextvars
import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentcell import errors
from agentcell.protocol.common import REQUEST_ID_HEADER, STATUS_BY_CODE, ErrorEnvelope, usable_request_id

log = logging.getLogger(__name__)

CODE_BY_STATUS = {
    404: "not_found",
    405: "invalid_argument",
    413: "payload_too_large",
    415: "invalid_argument",
}

_FASTAPI_UNPARSED = "There was an error parsing the body"

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def error_response(code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    envelope = ErrorEnvelope(code=code, message=message, request_id=request_id_var.get())
    return JSONResponse(envelope.model_dump(), status_code=STATUS_BY_CODE.get(code, 400), headers=headers)


def describe_validation(exc: RequestValidationError | ValidationError) -> str:
    """One line per problem, naming the field and what it must be."""
    parts = []
    for err in exc.errors()[:8]:
        if err.get("type") == "json_invalid" and tuple(err.get("loc", ()))[:1] == ("body",):
            parts.append(_not_json(_json_problem(err)))  # FastAPI's: loc ("body", offset), msg vague
            continue
        where = list(err.get("loc", ()))
        if where and where[0] in ("body", "query", "path", "header"):
            where = where[1:]
        loc = ".".join(str(p) for p in where)
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        given = err.get("input")
        shown = (
            ""
            if err.get("type") == "missing" or isinstance(given, dict | list)  # str() of it all: slow
            else f" (got {str(given)[:60]!r})"
        )
        parts.append(f"{loc or 'body'}: {msg}{shown}")
    return "; ".join(parts)


def _json_problem(err: Any) -> str:
    why = str(err.get("ctx", {}).get("error") or err.get("msg", "invalid"))
    offset = (err.get("loc") or (None,))[-1]
    return f"{why} at character {offset}" if isinstance(offset, int) else why


def _not_json(why: object) -> str:
    send = "send one JSON document, UTF-8, with Content-Type: application/json"
    return f"the body is not valid JSON ({why}); {send}"


def http_error_message(exc: StarletteHTTPException) -> str:
    """The message of an HTTP error raised by FastAPI or Starlette (also the E2B API's)."""
    if exc.detail == _FASTAPI_UNPARSED and exc.__cause__ is not None:
        # a body json.loads refused with something other than a JSONDecodeError (not UTF-8, an
        # integer of thousands of digits, nested deeper than the parser goes): the cause says which
        return _not_json(str(exc.__cause__)[:200])
    return str(exc.detail)


def _count(request: Request, code: str) -> None:
    """Errors by code, for /metrics (every error answer of the control plane passes here)."""
    telemetry = getattr(request.app.state, "telemetry", None)
    if telemetry is not None:
        telemetry.error(code)


async def _on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.AgentcellError)
    _count(request, exc.code)
    if isinstance(exc, errors.Internal):
        log.error("internal error: %s", exc.message)
    retry = getattr(exc, "retry_after_s", None)
    headers = {"retry-after": str(max(1, round(retry)))} if retry else None
    return error_response(exc.code, exc.message, headers)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    _count(request, "invalid_argument")
    if any(err.get("loc") == ("body",) and isinstance(err.get("input"), bytes) for err in exc.errors()):
        # a body that was not parsed as JSON: `curl -d` sends form encoding unless told otherwise
        given = request.headers.get("content-type") or "none"
        message = f"the body must be JSON sent with Content-Type: application/json (got {given!r})"
        return error_response("invalid_argument", message)
    return error_response("invalid_argument", describe_validation(exc))


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, errors.AgentcellError):
        # ours, raised while FastAPI read the body (BodyLimitMiddleware's 413 on a chunked body),
        # which FastAPI wraps as "There was an error parsing the body"
        return await _on_domain_error(request, exc.__cause__)
    code = CODE_BY_STATUS.get(exc.status_code, "invalid_argument")
    _count(request, code)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}; see /openapi.json"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}; see /openapi.json"
    else:
        message = http_error_message(exc)
    response = error_response(code, message)
    response.status_code = exc.status_code
    return response


async def _on_client_gone(request: Request, exc: Exception) -> JSONResponse:
    """The client went away while its request body was read: nobody is left to answer."""
    log.info("the client left before sending its whole request")
    return error_response("invalid_argument", "the request body ended early")


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    _count(request, "internal")
    return error_response("internal", "the server failed to handle this request; see its log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(errors.AgentcellError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(ClientDisconnect, _on_client_gone)
    app.add_exception_handler(Exception, _on_unexpected)


class RequestIdMiddleware:
    """Gives every request an id (the client's, if it sent a sane one) and echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = given if usable_request_id(given) else ""
        request_id = request_id or "req_" + secrets.token_hex(8)
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)
        # Not reset when the app fails: the 500 handler (in Starlette's outermost middleware) and
        # its log line still name the request. The request's task ends with it anyway.
        request_id_var.reset(token)
