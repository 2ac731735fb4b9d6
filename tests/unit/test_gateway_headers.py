"""The gateway's header rewrites give each request its own answer, memo or not."""

from __future__ import annotations

from agentcell.server.gateway import headers
from agentcell.server.gateway.headers import Framing, header_index, plan_response, upstream_request_head
from agentcell.server.gateway.route import RequestHead

CLIENT_HEADERS = (
    (b"Host", b"fn.example"),
    (b"User-Agent", b"sdk/1"),
    (b"Cookie", b"a=1"),
    (b"cookie", b"b=2"),
)
UPSTREAM_HEADERS = [(b"content-length", b"2"), (b"content-type", b"text/plain")]


def _head(
    client: str, request_id: str, path: bytes = b"/x", hdrs: tuple[tuple[bytes, bytes], ...] = CLIENT_HEADERS
) -> RequestHead:
    index = header_index(hdrs)
    return RequestHead(b"GET", path, b"q=1", hdrs, {**index, b"x-request-id": request_id.encode()}, client)


def _upstream(head: RequestHead, **kwargs: object) -> bytes:
    options: dict[str, object] = {
        "chunked": False,
        "upgrade": None,
        "proto": b"http",
        "trust_forwarded": False,
    }
    return upstream_request_head(head, path=head.raw_path, **{**options, **kwargs})  # type: ignore[arg-type]


def test_the_index_joins_duplicates_and_is_shared_by_equal_heads() -> None:
    first = header_index(CLIENT_HEADERS)
    assert first[b"cookie"] == b"a=1; b=2" and first[b"user-agent"] == b"sdk/1"
    assert header_index(tuple(CLIENT_HEADERS)) is first


def test_requests_with_the_same_headers_keep_their_own_client_id_and_path() -> None:
    one = _upstream(_head("10.0.0.1", "req-one", b"/a"))
    two = _upstream(_head("10.0.0.2", "req-two", b"/b"))
    assert one.startswith(b"GET /a?q=1 HTTP/1.1\r\n") and two.startswith(b"GET /b?q=1 HTTP/1.1\r\n")
    assert b"x-forwarded-for: 10.0.0.1\r\n" in one and b"10.0.0.2" not in one
    assert b"x-forwarded-for: 10.0.0.2\r\n" in two and b"10.0.0.1" not in two
    assert b"x-request-id: req-one\r\n" in one and b"x-request-id: req-two\r\n" in two
    assert one.endswith(b"\r\n\r\n") and one.count(b"\r\n\r\n") == 1


def test_a_route_dropping_a_header_is_not_served_from_another_routes_memo() -> None:
    head = _head("10.0.0.1", "req-1")
    assert b"User-Agent: sdk/1" in _upstream(head)
    assert b"User-Agent" not in _upstream(head, drop=frozenset({b"user-agent"}))
    chunked = _upstream(head, chunked=True, upgrade=b"websocket")
    assert chunked.endswith(
        b"transfer-encoding: chunked\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    )


def test_responses_with_the_same_headers_get_their_own_request_id_and_connection_line() -> None:
    options = {"no_body": False, "client_http10": False, "extra": ()}
    first, framing, keep, until_close, length = plan_response(
        200,
        UPSTREAM_HEADERS,
        keep_alive=True,
        request_id=b"req-a",
        **options,  # type: ignore[arg-type]
    )
    second, *_ = plan_response(200, UPSTREAM_HEADERS, keep_alive=False, request_id=b"req-b", **options)  # type: ignore[arg-type]
    assert (framing, keep, until_close, length) == (Framing.LENGTH, True, False, 2)
    assert (
        first
        == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\nx-request-id: req-a\r\n\r\n"
    )
    assert second.endswith(b"x-request-id: req-b\r\nconnection: close\r\n\r\n")
    own, *_ = plan_response(
        200,
        [*UPSTREAM_HEADERS, (b"X-Request-Id", b"theirs")],
        keep_alive=True,
        request_id=b"req-c",
        **options,  # type: ignore[arg-type]
    )
    assert b"X-Request-Id: theirs\r\n" in own and b"req-c" not in own


def test_the_memo_stays_bounded_and_skips_large_heads() -> None:
    for i in range(headers.MEMO_SIZE + 10):
        _upstream(_head("10.0.0.1", "r", hdrs=((b"Host", b"h%d" % i),)))
    assert 0 < len(headers._REQUEST_FIELDS) <= headers.MEMO_SIZE
    big = ((b"Host", b"h"), (b"X-Big", b"v" * (headers.MEMO_BYTES + 1)))
    headers._REQUEST_FIELDS.clear()
    assert b"X-Big: " in _upstream(_head("10.0.0.1", "r", hdrs=big))
    assert not headers._REQUEST_FIELDS
    headers._RESPONSE_PLANS.clear()
    hop = [(b"content-length", b"0"), (b"Connection", b"x-big"), (b"x-big", b"v" * (headers.MEMO_BYTES + 1))]
    head, *_ = plan_response(200, hop, no_body=False, client_http10=False, keep_alive=True, extra=())
    assert b"x-big" not in head and not headers._RESPONSE_PLANS  # dropped, and not kept by its key
