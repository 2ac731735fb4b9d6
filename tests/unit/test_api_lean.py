"""The lean path answers `@lean` routes exactly as FastAPI would, and hands FastAPI what it cannot."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from pydantic import BaseModel, Field

from agentcell.errors import NotFound
from agentcell.server.api.errors import install_error_handlers
from agentcell.server.api.lean import install_lean_routes, lean

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


class Order(BaseModel):
    item: str = Field(min_length=1)
    count: int = Field(default=1, ge=1)


class Receipt(BaseModel):
    shop: str
    item: str
    count: int
    total: float
    generic_path: bool
    """whether FastAPI's own handling ran (it opens the exit stacks the lean path skips)"""


async def _prices(request: Request) -> dict[str, float]:
    found: dict[str, float] = request.app.state.prices
    return found


Prices = Annotated[dict[str, float], Depends(_prices)]


def make_router(prefix: str, *, marked: bool) -> APIRouter:
    router = APIRouter(prefix=prefix)

    def mark(endpoint: Endpoint) -> Endpoint:
        return lean(endpoint) if marked else endpoint

    @router.post("/shops/{shop}/orders", status_code=201)
    @mark
    async def order(shop: str, body: Order, prices: Prices, request: Request) -> Receipt:
        if body.item not in prices:
            raise NotFound(f"{shop} sells no {body.item}")
        total = prices[body.item] * body.count
        generic = "fastapi_inner_astack" in request.scope
        return Receipt(shop=shop, item=body.item, count=body.count, total=total, generic_path=generic)

    @router.delete("/shops/{shop}", status_code=204)
    @mark
    async def close(shop: str) -> Response:
        return Response(status_code=204, headers={"x-closed": shop})

    return router


def make_app() -> FastAPI:
    app = FastAPI()
    app.state.prices = {"tea": 2.5, "cake": 4.0}
    install_error_handlers(app)
    routers = [make_router("/lean", marked=True), make_router("/generic", marked=False)]
    for router in routers:
        app.include_router(router)
    install_lean_routes(app, routers)
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


async def both(
    client: httpx.AsyncClient, method: str, path: str, **options: object
) -> tuple[httpx.Response, ...]:
    lean_reply = await client.request(method, "/lean" + path, **options)  # type: ignore[arg-type]
    generic_reply = await client.request(method, "/generic" + path, **options)  # type: ignore[arg-type]
    return lean_reply, generic_reply


async def test_a_valid_request_takes_the_lean_path_and_answers_as_fastapi(client: httpx.AsyncClient) -> None:
    lean_reply, generic_reply = await both(
        client, "POST", "/shops/corner/orders", json={"item": "tea", "count": 3}
    )
    assert lean_reply.status_code == generic_reply.status_code == 201
    assert lean_reply.json() == {**generic_reply.json(), "generic_path": False}
    assert generic_reply.json()["generic_path"] is True
    assert lean_reply.json()["total"] == 7.5
    assert lean_reply.headers["content-type"] == generic_reply.headers["content-type"] == "application/json"


async def test_an_endpoint_answering_a_response_keeps_its_status_and_headers(
    client: httpx.AsyncClient,
) -> None:
    lean_reply, generic_reply = await both(client, "DELETE", "/shops/corner")
    assert lean_reply.status_code == generic_reply.status_code == 204
    assert lean_reply.headers["x-closed"] == generic_reply.headers["x-closed"] == "corner"


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"item": ""}', {"content-type": "application/json"}),  # fails validation
        (b'{"item": "tea", "count": 0}', {"content-type": "application/json"}),
        (b'{"item": ', {"content-type": "application/json"}),  # not JSON
        (b'["tea"]', {"content-type": "application/json"}),
        (b'{"item": "tea"}', {"content-type": "text/plain"}),  # not declared as JSON
        (b'{"item": "tea"}', {}),
        (b"", {"content-type": "application/json"}),  # no body
    ],
)
async def test_a_body_the_lean_path_cannot_use_gets_fastapis_own_answer(
    client: httpx.AsyncClient, content: bytes, headers: dict[str, str]
) -> None:
    lean_reply, generic_reply = await both(
        client, "POST", "/shops/corner/orders", content=content, headers=headers
    )
    assert lean_reply.status_code == generic_reply.status_code
    assert lean_reply.status_code in (400, 422)
    assert lean_reply.json()["message"] == generic_reply.json()["message"]


async def test_a_json_media_type_with_parameters_or_a_suffix_takes_the_lean_path(
    client: httpx.AsyncClient,
) -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.shop+json"):
        reply = await client.post(
            "/lean/shops/corner/orders", content=b'{"item": "cake"}', headers={"content-type": content_type}
        )
        assert reply.status_code == 201, reply.text
        assert reply.json()["generic_path"] is False


async def test_an_error_the_endpoint_raises_reaches_the_apps_handlers(client: httpx.AsyncClient) -> None:
    lean_reply, generic_reply = await both(client, "POST", "/shops/corner/orders", json={"item": "soup"})
    assert lean_reply.status_code == generic_reply.status_code == 404
    assert lean_reply.json()["code"] == "not_found"
    assert lean_reply.json()["message"] == generic_reply.json()["message"] == "corner sells no soup"


async def test_the_lean_path_leaves_other_methods_and_paths_to_the_router(client: httpx.AsyncClient) -> None:
    assert (await client.get("/lean/shops/corner/orders")).status_code == 405
    assert (await client.post("/lean/shops/corner/orders/", json={"item": "tea"})).status_code in (307, 404)
    assert (await client.post("/lean/shops/a/b/orders", json={"item": "tea"})).status_code == 404


def test_a_route_whose_shape_needs_fastapi_cannot_be_lean() -> None:
    router = APIRouter()

    @router.get("/search")
    @lean
    async def search(q: str) -> dict[str, str]:  # a query parameter
        return {"q": q}

    app = FastAPI()
    app.include_router(router)
    with pytest.raises(TypeError, match="/search"):
        install_lean_routes(app, [router])


def test_a_lean_route_that_another_route_also_matches_is_refused() -> None:
    router = APIRouter()

    @router.get("/items/{item}")
    async def get_item(item: str) -> dict[str, str]:
        return {"item": item}

    @router.get("/items/{name}")
    @lean
    async def get_named(name: str) -> dict[str, str]:
        return {"name": name}

    app = FastAPI()
    app.include_router(router)
    with pytest.raises(TypeError, match="another route matches"):
        install_lean_routes(app, [router])
