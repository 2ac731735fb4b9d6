"""The pure MCP part of the gateway: transport era, legacy session ids, the SSE endpoint rewrite."""

from __future__ import annotations

import pytest

from agentcell.server.gateway.keys import mcp_session_key
from agentcell.server.gateway.mcp import (
    MAX_FIRST_EVENT,
    EndpointRewriter,
    SessionNaming,
    is_stateless,
    query_session_id,
)
from agentcell.server.gateway.route import RequestHead


def head(**headers: str) -> RequestHead:
    pairs = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return RequestHead(b"POST", b"/mcp", b"", pairs, dict(pairs), "127.0.0.1")


@pytest.mark.parametrize(
    ("version", "stateless"),
    [(None, False), ("2025-11-25", False), ("2024-11-05", False), ("2026-07-28", True), ("2099-01-01", True)],
)
def test_only_modern_versions_are_stateless(version: str | None, stateless: bool) -> None:
    request = head(mcp_protocol_version=version) if version else head()
    assert is_stateless(request) is stateless


def test_legacy_session_ids_come_from_either_query_spelling() -> None:
    assert query_session_id(b"session_id=abc") == "abc"
    assert query_session_id(b"x=1&sessionId=def") == "def"
    assert query_session_id(b"x=1") is None
    assert query_session_id(b"") is None


def rewrite(chunks: list[bytes], mount: bytes = b"/fn/tools") -> tuple[bytes, list[str]]:
    named: list[str] = []
    rewriter = EndpointRewriter(mount, named.append)
    return b"".join(rewriter(chunk) for chunk in chunks), named


def test_the_endpoint_event_is_rewritten_onto_the_gateway_even_when_split() -> None:
    stream = b"event: endpoint\ndata: /messages/?session_id=abc123\n\nevent: message\ndata: {}\n\n"
    for cut in (1, 10, 30, len(stream) - 1):
        out, named = rewrite([stream[:cut], stream[cut:]])
        assert out == stream.replace(b"data: /messages", b"data: /fn/tools/messages")
        assert named == ["abc123"]


def test_crlf_streams_and_typescript_ids() -> None:
    out, named = rewrite([b"event: endpoint\r\ndata: /message?sessionId=ts-1\r\n\r\n"])
    assert out == b"event: endpoint\r\ndata: /fn/tools/message?sessionId=ts-1\r\n\r\n"
    assert named == ["ts-1"]


def test_relative_and_absolute_endpoints_are_left_as_they_are() -> None:
    for url in (b"messages/?session_id=r", b"http://elsewhere/messages/?session_id=r"):
        out, named = rewrite([b"event: endpoint\ndata: " + url + b"\n\n"])
        assert out == b"event: endpoint\ndata: " + url + b"\n\n" and named == ["r"]


def test_a_stream_that_does_not_start_with_an_endpoint_passes_untouched() -> None:
    out, named = rewrite([b"data: hello\n\n", b"data: /messages/?session_id=x\n\n"])
    assert out == b"data: hello\n\ndata: /messages/?session_id=x\n\n" and named == []
    big = b"x" * (MAX_FIRST_EVENT + 1)
    out, named = rewrite([big, b"more"])
    assert out == big + b"more" and named == []


def naming(method: bytes = b"POST") -> tuple[SessionNaming, list[str]]:
    named: list[str] = []
    return SessionNaming(method, named.append), named


@pytest.mark.parametrize("status", [400, 404, 500])
def test_a_failed_answer_names_no_session_even_with_a_session_header(status: int) -> None:
    session, named = naming()
    session.on_response_head(status, [(b"Mcp-Session-Id", b"fresh-id")])
    session.from_endpoint("from-sse")
    assert named == []


def test_only_a_2xx_post_names_from_the_header() -> None:
    session, named = naming()
    session.on_response_head(200, [(b"content-type", b"application/json"), (b"Mcp-Session-Id", b" abc ")])
    assert named == ["abc"]
    for method in (b"GET", b"DELETE"):
        session, named = naming(method)
        session.on_response_head(200, [(b"mcp-session-id", b"abc")])
        assert named == []


def test_a_legacy_stream_is_named_from_its_endpoint_once_it_succeeded() -> None:
    session, named = naming(b"GET")
    session.on_response_head(200, [(b"content-type", b"text/event-stream")])
    session.from_endpoint("c2Vzc2lvbg==")
    assert named == [mcp_session_key("c2Vzc2lvbg==")] and named[0] != "c2Vzc2lvbg=="


def test_an_id_the_spec_does_not_allow_is_not_bound() -> None:
    session, named = naming()
    session.on_response_head(200, [(b"mcp-session-id", b"has space")])
    assert named == []
