"""The lean path: the hottest JSON endpoints answered without FastAPI's generic request handling.

For every request FastAPI matches the path against all the app's routes, opens two
AsyncExitStacks, parses the content type with `email.message`, and solves the dependency graph.
Under a burst of 50 create + first exec that was as much of the server's Python as the create and
exec endpoints themselves (cProfile; bench/RESULTS.md, session 10). A route whose endpoint is
marked `@lean` is answered here instead, when its shape allows: `str` path parameters, at most one
pydantic body, the `Request` itself, and dependencies that take only the `Request`. It is the same `APIRoute`
(`scope["route"]` is set as FastAPI sets it, so audit lines and metrics name it; the OpenAPI
document is unchanged): its own path regex matches, its own body field validates, its dependencies
are called directly, FastAPI's own serializer renders the result, and exceptions reach the app's
exception handlers as before. A body that is not valid JSON of the right shape takes FastAPI's
path after all (replayed to it), so every error message stays FastAPI's.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI
from fastapi.datastructures import DefaultPlaceholder
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, serialize_response
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
Provider = Callable[[Request], Awaitable[Any]]
_MARK = "__agentcell_lean__"


def lean(endpoint: Endpoint) -> Endpoint:
    """Mark a route's endpoint for the lean path (checked when the app is built)."""
    setattr(endpoint, _MARK, True)
    return endpoint


@dataclass(frozen=True)
class _Body:
    name: str
    field: Any  # fastapi's ModelField


@dataclass(frozen=True)
class LeanRoute:
    route: APIRoute
    body: _Body | None
    providers: tuple[tuple[str, Provider], ...]

    @classmethod
    def of(cls, route: APIRoute) -> LeanRoute:
        """The lean form of `route`; TypeError when its shape needs FastAPI's generic handling."""
        dependant = route.dependant
        unsupported = (
            dependant.query_params
            or dependant.header_params
            or dependant.cookie_params
            or len(dependant.body_params) > 1
            or route._embed_body_fields
            or dependant.response_param_name
            or dependant.background_tasks_param_name
            or dependant.security_scopes_param_name
            or not inspect.iscoroutinefunction(dependant.call)
            or not _plain_json_response(route)
            or any(param.field_info.annotation is not str for param in dependant.path_params)
        )
        if unsupported:
            raise TypeError(f"{route.path}: @lean needs str path params, one JSON body, plain deps")
        body = next((_Body(field.name, field) for field in dependant.body_params), None)
        providers = tuple((sub.name or "", _provider(route, sub)) for sub in dependant.dependencies)
        return cls(route, body, providers)

    def matches(self, scope: Scope) -> dict[str, str] | None:
        """The path parameters, if the path is this route's (the method is checked by the caller)."""
        found = self.route.path_regex.match(get_route_path(scope))
        return found.groupdict() if found else None

    async def handle(self, scope: Scope, params: dict[str, str], receive: Receive, send: Send) -> None:
        scope["path_params"] = {**scope.get("path_params", {}), **params}
        scope["route"] = self.route
        scope["endpoint"] = self.route.endpoint
        request = Request(scope, receive, send)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            arguments = await self._arguments(request, params)
            if arguments is None:  # FastAPI's path says what is wrong with the body
                await self.route.handle(scope, _replay(request, await request.body()), send)
                return
            response = await self._respond(await self.route.endpoint(**arguments))
            await response(scope, receive, send)

        await wrap_app_handling_exceptions(app, request)(scope, receive, send)

    async def _arguments(self, request: Request, params: dict[str, str]) -> dict[str, Any] | None:
        arguments: dict[str, Any] = dict(params)
        if self.route.dependant.request_param_name:
            arguments[self.route.dependant.request_param_name] = request
        if self.body is not None:
            value = _json_body(request, await request.body(), self.body.field)
            if value is None:
                return None
            arguments[self.body.name] = value
        for name, provider in self.providers:
            arguments[name] = await provider(request)
        return arguments

    async def _respond(self, result: Any) -> Response:
        if isinstance(result, Response):
            return result
        status = self.route.status_code or 200
        if self.route.response_field is None:
            return JSONResponse(jsonable_encoder(result), status_code=status)
        content = await serialize_response(
            field=self.route.response_field, response_content=result, dump_json=True
        )
        return Response(content, status_code=status, media_type="application/json")


def _plain_json_response(route: APIRoute) -> bool:
    return (
        isinstance(route.response_class, DefaultPlaceholder)
        and route.response_model_include is None
        and route.response_model_exclude is None
        and route.response_model_by_alias
        and not route.response_model_exclude_unset
        and not route.response_model_exclude_defaults
        and not route.response_model_exclude_none
    )


def _provider(route: APIRoute, sub: Any) -> Provider:
    """A dependency that takes only the request (how api/deps.py finds the services)."""
    plain = (
        sub.request_param_name
        and inspect.iscoroutinefunction(sub.call)
        and not (sub.dependencies or sub.path_params or sub.query_params or sub.header_params)
        and not (sub.cookie_params or sub.body_params or sub.response_param_name)
    )
    if not plain:
        raise TypeError(f"{route.path}: @lean dependencies must take only the Request")
    call, parameter = sub.call, sub.request_param_name

    async def provide(request: Request) -> Any:
        return await call(**{parameter: request})

    return provide


def _json_body(request: Request, raw: bytes, field: Any) -> Any | None:
    """The validated body, or None for anything FastAPI should answer (not JSON, invalid...)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    json_type = media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )
    if not raw or not json_type:
        return None
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    value, errors = field.validate(decoded, {}, loc=("body",))
    return None if errors else value


def _replay(request: Request, body: bytes) -> Receive:
    """`receive` for FastAPI's path: the body already read, then the client's own messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Message:
        return pending.pop() if pending else await request.receive()

    return receive


class LeanDispatch:
    """In front of the app's router: requests for `@lean` routes take the lean path."""

    def __init__(self, router: APIRouter, routes: Sequence[LeanRoute]) -> None:
        self.router = router
        self.app = router.middleware_stack
        self.by_method: dict[str, list[LeanRoute]] = {}
        for route in routes:
            for method in route.route.methods or ():
                self.by_method.setdefault(method, []).append(route)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.by_method.get(scope["method"], ()):
                params = route.matches(scope)
                if params is not None:
                    scope.setdefault("router", self.router)  # as the router sets it (url_for)
                    await route.handle(scope, params, receive, send)
                    return
        await self.app(scope, receive, send)


def install_lean_routes(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """Put the lean path in front of the app's router, for every `@lean` endpoint of `routers`
    (included in the app as they are: no prefix or dependencies added at the include)."""
    routes = [route for router in routers for route in router.routes]
    # the app's own routes and mounts; its included routers are among `routers`
    others = [*routes, *(r for r in app.router.routes if isinstance(r, Route | Mount | WebSocketRoute))]
    marked = [
        route for route in routes if isinstance(route, APIRoute) and getattr(route.endpoint, _MARK, False)
    ]
    for route in marked:
        _check_alone(route, others)
    app.router.middleware_stack = LeanDispatch(app.router, [LeanRoute.of(r) for r in marked])


def _check_alone(route: APIRoute, routes: Sequence[BaseRoute]) -> None:
    """The lean path skips the router's ordered search: no other route may match a lean one's paths."""
    path = route.path_format.replace("{", "").replace("}", "")
    for method in route.methods or ():
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "path_params": {}}
        for other in routes:
            if other is not route and other.matches(scope)[0] == Match.FULL and _routes_method(other, method):
                raise TypeError(f"{method} {route.path}: another route matches it too; it cannot be @lean")


def _routes_method(route: BaseRoute, method: str) -> bool:
    methods = getattr(route, "methods", None)
    return methods is None or method in methods
