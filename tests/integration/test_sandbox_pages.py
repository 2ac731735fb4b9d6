"""`GET /v1/sandboxes` a page at a time, against a real server (on the fake driver: these tests are
about the list, and a hundred sandboxes of it cost no namespaces): pages cover every sandbox once,
oldest first, and stay put while sandboxes start and end between them; the SDK (async and sync),
the CLI and the `/mcp` tool follow the pages to the end."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from agentcell.client import AsyncSandbox, InvalidArgumentError, Sandbox
from agentcell.protocol.sandboxes import MAX_SANDBOX_PAGE
from tests.conftest import AUTH, ServerProcess
from tests.integration.test_cli import agentcell

MANY = MAX_SANDBOX_PAGE + 1
"""sandboxes of one tag that take two pages at the server's largest page"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    state_dir = tmp_path_factory.mktemp("pages") / "state"
    server = ServerProcess(state_dir, driver="fake", env={"AGENTCELL_SANDBOX_POOL": "0"})
    yield server
    code = server.stop()
    assert code == 0, f"server exited with {code}:\n{server.log()}"


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client


def create(api: httpx.Client, tag: str, **metadata: str) -> str:
    reply = api.post("/v1/sandboxes", json={"timeout_s": 600, "metadata": {"tag": tag, **metadata}})
    assert reply.status_code == 201, reply.text
    sandbox_id: str = reply.json()["id"]
    return sandbox_id


@pytest.fixture(scope="module")
def many(api: httpx.Client) -> tuple[str, list[str]]:
    """A tag and the ids of its MANY sandboxes, oldest first (ended with the module's server)."""
    tag = uuid.uuid4().hex[:12]
    return tag, [create(api, tag) for _ in range(MANY)]


def page(api: httpx.Client, **params: Any) -> dict[str, Any]:
    reply = api.get("/v1/sandboxes", params=params)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    assert len(answer["sandboxes"]) <= params.get("limit", MAX_SANDBOX_PAGE)
    return answer


def ids(answer: dict[str, Any]) -> list[str]:
    return [s["id"] for s in answer["sandboxes"]]


def walk(api: httpx.Client, **params: Any) -> list[list[str]]:
    """Every page's ids, following `next_token` to the last page."""
    pages = [page(api, **params)]
    while pages[-1]["next_token"] is not None:
        pages.append(page(api, **params, next_token=pages[-1]["next_token"]))
    return [ids(p) for p in pages]


def refused(reply: httpx.Response, status: int, *phrases: str) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"code", "message", "request_id"}, body
    assert all(phrase in body["message"] for phrase in phrases), body["message"]


def test_pages_cover_every_sandbox_once_oldest_first(api: httpx.Client) -> None:
    """Pages of `limit` (the last one short, its next_token null) hold every sandbox of the
    filter exactly once, in the order they were created."""
    tag = uuid.uuid4().hex[:12]
    created = [create(api, tag) for _ in range(5)]
    assert walk(api, metadata=f"tag={tag}", limit=2) == [created[:2], created[2:4], created[4:]]
    assert walk(api, metadata=f"tag={tag}", limit=5) == [created]
    assert walk(api, metadata=f"tag={tag}") == [created]
    assert walk(api, metadata="tag=nobody", limit=1) == [[]]


def test_sandboxes_started_and_killed_between_pages_neither_shift_nor_repeat_the_next(
    api: httpx.Client,
) -> None:
    """The token names the last sandbox of its page, not an offset: killing that one and one
    before it, and creating another, leaves the next page as it was; the new one comes last."""
    tag = uuid.uuid4().hex[:12]
    a, b, c, d, e = (create(api, tag) for _ in range(5))
    first = page(api, metadata=f"tag={tag}", limit=2)
    assert ids(first) == [a, b]
    for gone in (a, b):
        assert api.delete(f"/v1/sandboxes/{gone}").status_code == 204
    f = create(api, tag)
    second = page(api, metadata=f"tag={tag}", limit=2, next_token=first["next_token"])
    assert ids(second) == [c, d]
    assert api.delete(f"/v1/sandboxes/{c}").status_code == 204
    last = page(api, metadata=f"tag={tag}", limit=2, next_token=second["next_token"])
    assert ids(last) == [e, f] and last["next_token"] is None


def test_filters_hold_on_every_page(api: httpx.Client) -> None:
    """metadata and state filters cut the pages: each page holds only what matches, all of it."""
    tag = uuid.uuid4().hex[:12]
    created = [create(api, tag, colour=colour) for colour in ("red", "blue") * 3]
    red, blue = created[0::2], created[1::2]
    assert walk(api, metadata=[f"tag={tag}", "colour=red"], limit=1) == [[s] for s in red]
    assert walk(api, metadata=[f"tag={tag}", "colour=blue"], state="running", limit=2) == [blue[:2], blue[2:]]
    assert walk(api, metadata=f"tag={tag}", state="paused", limit=1) == [[]]


def test_a_bad_limit_or_token_says_what_to_send(api: httpx.Client) -> None:
    for limit in ("0", "-1", str(MAX_SANDBOX_PAGE + 1), str(10**30), "ten"):
        refused(api.get("/v1/sandboxes", params={"limit": limit}), 400, "limit: ", repr(limit))
    for token in ("garbage!", "bm9wZQ==", "fA=="):
        reply = api.get("/v1/sandboxes", params={"next_token": token})
        refused(reply, 400, "next_token is not one this server issued", "none for the first page")
    assert page(api, next_token="")["sandboxes"] == page(api)["sandboxes"]  # no token: the first page


def test_the_openapi_document_describes_the_paging(api: httpx.Client) -> None:
    document = api.get("/openapi.json").json()
    params = {p["name"]: p for p in document["paths"]["/v1/sandboxes"]["get"]["parameters"]}
    assert {"metadata", "state", "limit", "next_token"} <= set(params)
    limit = params["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, MAX_SANDBOX_PAGE, MAX_SANDBOX_PAGE)
    assert "next_token" in document["components"]["schemas"]["SandboxList"]["properties"]


def test_a_full_page_has_a_next_token_to_the_rest(api: httpx.Client, many: tuple[str, list[str]]) -> None:
    tag, created = many
    assert walk(api, metadata=f"tag={tag}") == [created[:MAX_SANDBOX_PAGE], created[MAX_SANDBOX_PAGE:]]


async def test_the_async_sdk_follows_the_pages(server: ServerProcess, many: tuple[str, list[str]]) -> None:
    """`list` returns every sandbox (more than a page of the server's largest, or of `page_size`);
    `list_page` one page and the token of the next."""
    tag, created = many
    url, mine = server.url, {"tag": tag}
    assert [s.id for s in await AsyncSandbox.list(metadata=mine, api_url=url)] == created
    assert [s.id for s in await AsyncSandbox.list(metadata=mine, api_url=url, page_size=40)] == created
    first = await AsyncSandbox.list_page(metadata=mine, state="running", limit=60, api_url=url)
    assert [s.id for s in first.sandboxes] == created[:60] and first.next_token is not None
    rest = await AsyncSandbox.list_page(metadata=mine, next_token=first.next_token, api_url=url)
    assert [s.id for s in rest.sandboxes] == created[60:] and rest.next_token is None
    with pytest.raises(InvalidArgumentError, match="limit"):
        await AsyncSandbox.list(api_url=url, page_size=0)


def test_the_sync_sdk_follows_the_pages(server: ServerProcess, many: tuple[str, list[str]]) -> None:
    tag, created = many
    assert [s.id for s in Sandbox.list(metadata={"tag": tag}, api_url=server.url)] == created
    first = Sandbox.list_page(metadata={"tag": tag}, limit=MAX_SANDBOX_PAGE, api_url=server.url)
    assert [s.id for s in first.sandboxes] == created[:MAX_SANDBOX_PAGE] and first.next_token
    rest = Sandbox.list_page(metadata={"tag": tag}, next_token=first.next_token, api_url=server.url)
    assert [s.id for s in rest.sandboxes] == created[MAX_SANDBOX_PAGE:] and rest.next_token is None


def test_sandbox_ls_lists_every_page(server: ServerProcess, many: tuple[str, list[str]]) -> None:
    """`agentcell sandbox ls` shows all of them, as a table and as one JSON list."""
    tag, created = many
    listed = agentcell(server.url, "sandbox", "ls", "--metadata", f"tag={tag}", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [s["id"] for s in json.loads(listed.stdout)] == created
    table = agentcell(server.url, "sandbox", "ls", "--metadata", f"tag={tag}")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == created


async def test_the_mcp_tool_answers_a_page_and_the_token_of_the_next(
    server: ServerProcess, many: tuple[str, list[str]]
) -> None:
    """`list_sandboxes` answers the running sandboxes 100 at a time (an agent's context holds no
    thousand); its `next_token` gets the next page, a made-up one is a tool error saying so."""
    _, created = many
    async with (
        create_mcp_http_client(headers=AUTH) as http,
        Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as client,
    ):
        seen: list[str] = []
        token: str | None = None
        while True:
            result = await client.call_tool("list_sandboxes", {} if token is None else {"next_token": token})
            assert not result.is_error, result
            answer = json.loads(result.content[0].text)  # type: ignore[union-attr]
            assert len(answer["sandboxes"]) <= MAX_SANDBOX_PAGE
            seen += [s["id"] for s in answer["sandboxes"]]
            token = answer["next_token"]
            if token is None:
                break
        assert len(seen) == len(set(seen)) and set(created) <= set(seen)
        bad = await client.call_tool("list_sandboxes", {"next_token": "garbage!"})
        assert bad.is_error and "next_token is not one this server issued" in bad.content[0].text  # type: ignore[union-attr]


def test_snapshot_ls_lists_every_page(server: ServerProcess, api: httpx.Client) -> None:
    """`agentcell snapshot ls` follows `/v1/snapshots`' pages as `sandbox ls` does sandboxes'."""
    sandbox_id = create(api, uuid.uuid4().hex[:12])
    taken = [api.post(f"/v1/sandboxes/{sandbox_id}/snapshots").json()["id"] for _ in range(MANY)]
    try:
        listed = agentcell(server.url, "snapshot", "ls", "--sandbox", sandbox_id, "--json")
        assert listed.returncode == 0, listed.stderr
        assert [s["id"] for s in json.loads(listed.stdout)] == taken
    finally:
        for snapshot_id in taken:
            api.delete(f"/v1/snapshots/{snapshot_id}")
