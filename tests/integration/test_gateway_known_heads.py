"""Known heads: a read that repeats, byte for byte, a request head (or a response head) the parser
made something of before is not parsed again (`connection.KnownRequest`, `upstream.KnownHead`).

Every test here first checks that the fast path was taken (the head is in the memo), then that
what it answered is what parsing would have: the per-request parts (request ids, bodies, the
client's address) are each request's own, and what the parser says once a message is over (keep
alive or close, the HTTP version) is carried over. Heads carry a token of their test, so that no
test finds another's heads remembered. Real sockets, a scripted upstream; most scenarios run again
on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from agentcell.server.gateway import connection, upstream
from tests.integration.test_gateway_proxy import (
    Client,
    Handler,
    RawUpstream,
    StaticRouter,
    raw_response,
    read_request,
    running_gateway,
)


@contextlib.asynccontextmanager
async def gateway_client(handler: Handler) -> AsyncIterator[tuple[RawUpstream, Client]]:
    """The gateway in front of a scripted upstream answering with `handler`, and a client
    connection to the gateway (closed after)."""
    async with RawUpstream(handler) as up, running_gateway(StaticRouter(up.address)) as (_, address):
        client = await Client.connect(address)
        try:
            yield up, client
        finally:
            await client.aclose()


def token() -> str:
    return uuid.uuid4().hex


async def echo_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    """Answer each request with what the upstream received of it, as JSON (one fixed-size head)."""
    while (request := await read_request(reader)) is not None:
        seen = {
            "method": request.method.decode(),
            "target": request.target.decode(),
            "request_id": request.headers[b"x-request-id"].decode(),
            "forwarded_for": request.headers[b"x-forwarded-for"].decode(),
            "body": request.body.decode(),
        }
        writer.write(raw_response(200, json.dumps(seen).encode()))
        await writer.drain()


def request_bytes(target: str, *headers: str, version: str = "1.1") -> bytes:
    return ("\r\n".join([f"GET {target} HTTP/{version}", "Host: gw.test", *headers]) + "\r\n\r\n").encode()


async def test_a_repeated_request_is_made_from_its_known_head(tmp_path: Path) -> None:
    raw = request_bytes(f"/known/{token()}?q=1", "Accept: */*")
    async with gateway_client(echo_request) as (_up, client):
        replies = []
        for _ in range(5):
            client.send(raw)
            replies.append(await client.reply())
    assert raw in connection._KNOWN, "the repeated head was never remembered: the fast path did not run"
    seen = [reply.json() for reply in replies]
    assert all(reply.status == 200 for reply in replies)
    assert {s["target"] for s in seen} == {raw.split(b" ")[1].decode()}  # path and query kept
    assert {s["forwarded_for"] for s in seen} == {"127.0.0.1"}  # the connection's own client
    request_ids = [s["request_id"] for s in seen]
    assert len(set(request_ids)) == 5, f"each request needs an id of its own: {request_ids}"
    assert [reply.header(b"x-request-id").decode() for reply in replies] == request_ids  # type: ignore[union-attr]


async def test_a_known_head_that_asks_to_close_still_closes(tmp_path: Path) -> None:
    # The parser forgets "Connection: close" once the request is over: what it said is kept with
    # the head, so the remembered request closes its connection as the first one did.
    raw = request_bytes(f"/close/{token()}", "Connection: close")
    async with RawUpstream(echo_request) as up, running_gateway(StaticRouter(up.address)) as (_, address):
        for attempt in range(3):
            client = await Client.connect(address)
            client.send(raw)
            reply = await client.reply()
            assert reply.status == 200 and reply.header(b"connection") == b"close", (attempt, reply.headers)
            assert await client.at_eof(), f"attempt {attempt}: the gateway kept the connection open"
            await client.aclose()
    assert raw in connection._KNOWN


async def test_a_known_http10_request_is_answered_as_http10(tmp_path: Path) -> None:
    raw = request_bytes(f"/old/{token()}", version="1.0")
    async with RawUpstream(echo_request) as up, running_gateway(StaticRouter(up.address)) as (_, address):
        answers = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection(*address)
            writer.write(raw)
            answers.append(await asyncio.wait_for(reader.read(), 10))  # to EOF: 1.0 does not keep alive
            writer.close()
            await writer.wait_closed()
    assert raw in connection._KNOWN
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        assert b"connection: keep-alive" not in head.lower()
        assert json.loads(body)["target"].startswith("/old/")


async def test_pipelined_and_split_known_heads_are_parsed(tmp_path: Path) -> None:
    raw = request_bytes(f"/pipe/{token()}")
    async with gateway_client(echo_request) as (_up, client):
        client.send(raw)
        assert (await client.reply()).status == 200
        assert raw in connection._KNOWN
        for _ in range(2):  # two known heads in one read are two requests, every time
            client.send(raw + raw)
            first, second = await client.reply(), await client.reply()
            assert first.json()["request_id"] != second.json()["request_id"]
        client.send(raw + raw[:10])  # a known head and the start of another
        await client.writer.drain()
        await asyncio.sleep(0.05)
        client.send(raw[10:])
        assert (await client.reply()).status == 200 and (await client.reply()).status == 200
        client.send(raw[:10])  # a known head split over two reads
        await client.writer.drain()
        await asyncio.sleep(0.05)
        client.send(raw[10:])
        assert (await client.reply()).json()["target"].startswith("/pipe/")


async def test_a_request_with_a_body_is_made_from_its_known_head_with_its_own_body(tmp_path: Path) -> None:
    target = f"/body/{token()}"
    head = f"POST {target} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 6\r\n\r\n".encode()
    async with gateway_client(echo_request) as (_up, client):
        bodies = []
        for n in range(4):
            client.send(head + f"body {n}".encode())
            bodies.append((await client.reply()).json()["body"])
        client.send(head)  # the known head, its body in a later read
        await client.writer.drain()
        await asyncio.sleep(0.05)
        client.send(b"later!")
        bodies.append((await client.reply()).json()["body"])
        for _ in range(2):  # a body and a blank line after it (which the parser skips)
            client.send(head + b"crlf!!\r\n")
            bodies.append((await client.reply()).json()["body"])
        client.send(head + b"short")  # a body shorter than its Content-Length says: it waits
        await client.writer.drain()
        await asyncio.sleep(0.05)
        client.send(b"!")
        bodies.append((await client.reply()).json()["body"])
    assert head in connection._KNOWN, "the repeated head was never remembered"
    assert bodies == ["body 0", "body 1", "body 2", "body 3", "later!", "crlf!!", "crlf!!", "short!"]


async def test_chunked_request_bodies_are_always_parsed(tmp_path: Path) -> None:
    target = f"/chunked/{token()}"
    head = f"POST {target} HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    async with gateway_client(echo_request) as (_up, client):
        bodies = []
        for n in range(3):
            client.send(head + b"6\r\nbody %d\r\n0\r\n\r\n" % n)
            bodies.append((await client.reply()).json()["body"])
    assert bodies == ["body 0", "body 1", "body 2"]
    assert not any(target.encode() in key for key in connection._KNOWN)


async def test_a_body_that_repeats_a_known_head_is_a_body(tmp_path: Path) -> None:
    raw = request_bytes(f"/smuggled/{token()}")
    async with gateway_client(echo_request) as (_up, client):
        client.send(raw)
        assert (await client.reply()).status == 200
        assert raw in connection._KNOWN
        client.send(b"POST /carrier HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % len(raw))
        await client.writer.drain()
        await asyncio.sleep(0.05)
        client.send(raw)  # the POST's body, in a read of its own
        carrier = (await client.reply()).json()
        client.send(request_bytes("/next"))
        following = (await client.reply()).json()
    assert carrier["target"] == "/carrier" and carrier["body"] == raw.decode()
    assert following["target"] == "/next", "the body was taken for a request"


def answer_with(*responses: Callable[[int], bytes]) -> Callable[..., Coroutine[Any, Any, None]]:
    """An upstream that answers its connection's n-th request with `responses[n](n)` (the last one
    repeats), written at once."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        n = 0
        while await read_request(reader) is not None:
            writer.write(responses[min(n, len(responses) - 1)](n))
            await writer.drain()
            n += 1

    return handler


async def test_a_known_response_head_carries_each_response_s_own_body(tmp_path: Path) -> None:
    mark = f"x-test: {token()}".encode()
    head_of = raw_response(200, b"body-000", mark).partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    numbered = answer_with(lambda n: raw_response(200, b"body-%03d" % n, mark))
    async with gateway_client(numbered) as (_up, client):
        replies = [await client.request("GET", "/numbered") for _ in range(5)]
    assert head_of in upstream._KNOWN, "the repeated response head was never remembered"
    assert [bytes(reply.body) for reply in replies] == [b"body-%03d" % n for n in range(5)]
    assert all(reply.header(b"x-test") == mark.split(b": ")[1] for reply in replies)
    assert len({reply.header(b"x-request-id") for reply in replies}) == 5


async def test_a_known_response_head_that_closes_is_not_pooled(tmp_path: Path) -> None:
    mark = f"x-test: {token()}".encode()
    closing = answer_with(lambda _: raw_response(200, b"bye", b"connection: close", mark))
    async with gateway_client(closing) as (up, client):
        replies = [await client.request("GET", "/closing") for _ in range(4)]
    assert [bytes(reply.body) for reply in replies] == [b"bye"] * 4
    assert up.accepted == 4, "a response that said `connection: close` had its connection reused"


async def test_a_head_request_after_a_known_response(tmp_path: Path) -> None:
    mark = f"x-test: {token()}".encode()
    full = raw_response(200, b"", mark)  # an empty body: a HEAD answer has the same bytes

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while (request := await read_request(reader)) is not None:
            writer.write(full if request.method != b"HEAD" else raw_response(200, b"0123456789", mark)[:-10])
            await writer.drain()

    async with gateway_client(handler) as (up, client):
        assert (await client.request("GET", "/")).status == 200
        assert (await client.request("GET", "/")).status == 200
        client.send(b"HEAD / HTTP/1.1\r\nHost: gw.test\r\n\r\n")  # (the client's parser would want a body)
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
        after = await client.request("GET", "/")
    assert full.partition(b"\r\n\r\n")[0] + b"\r\n\r\n" in upstream._KNOWN
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 10\r\n" in head.lower(), head
    assert after.status == 200 and not after.body
    assert up.accepted == 1


async def test_two_answers_in_one_read_are_refused_after_a_known_head(tmp_path: Path) -> None:
    one = raw_response(200, b"once", f"x-test: {token()}".encode())
    twice = answer_with(lambda _: one, lambda _: one + one, lambda _: one)
    async with gateway_client(twice) as (up, client):
        replies = [await client.request("GET", "/twice") for _ in range(3)]
    # the extra answer never reached a client
    assert [bytes(reply.body) for reply in replies] == [b"once"] * 3
    assert up.accepted == 2, "the connection that answered twice was used again"


async def test_chunked_and_split_responses_are_parsed(tmp_path: Path) -> None:
    mark = f"x-test: {token()}".encode()
    chunked = b"HTTP/1.1 200 OK\r\n" + mark + b"\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        n = 0
        while await read_request(reader) is not None:
            if n % 2 == 0:
                writer.write(chunked)
            else:  # a known length head, its body in a later read
                writer.write(raw_response(200, b"", mark).replace(b"content-length: 0", b"content-length: 5"))
                await writer.drain()
                await asyncio.sleep(0.02)
                writer.write(b"split")
            await writer.drain()
            n += 1

    async with gateway_client(handler) as (_up, client):
        bodies = [bytes((await client.request("GET", "/mixed")).body) for _ in range(6)]
    assert bodies == [b"hello", b"split"] * 3
    assert not any(mark in key for key in upstream._KNOWN), "a chunked or split response was remembered"


async def test_a_response_body_that_repeats_a_known_response_is_a_body(tmp_path: Path) -> None:
    known = raw_response(200, b"inner", f"x-test: {token()}".encode())

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        n = 0
        while await read_request(reader) is not None:
            if n < 2:
                writer.write(known)
            else:  # a chunked answer whose one chunk, read on its own, is the known response
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n%x\r\n" % len(known))
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(known)
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"\r\n0\r\n\r\n")
            await writer.drain()
            n += 1

    async with gateway_client(handler) as (_up, client):
        assert [bytes((await client.request("GET", "/")).body) for _ in range(2)] == [b"inner"] * 2
        assert known.partition(b"\r\n\r\n")[0] + b"\r\n\r\n" in upstream._KNOWN
        outer = await client.request("GET", "/")
    assert bytes(outer.body) == known, "a chunk of a response was taken for a response"


UVLOOP_SCENARIOS = [
    test_a_repeated_request_is_made_from_its_known_head,
    test_a_known_head_that_asks_to_close_still_closes,
    test_a_known_response_head_carries_each_response_s_own_body,
    test_two_answers_in_one_read_are_refused_after_a_known_head,
]


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS, ids=lambda s: s.__name__.removeprefix("test_"))
def test_on_uvloop(scenario: Callable[[Path], Coroutine[Any, Any, None]], tmp_path: Path) -> None:
    """The production event loop: the same scenarios, run by uvloop."""
    uvloop.run(scenario(tmp_path))
