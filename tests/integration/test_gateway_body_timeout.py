"""The gateway's body-read timeout (nginx's client_body_timeout): a request body that stops
arriving ends its request and its connection, while a slow but steady body, a body the gateway
itself holds back (the upstream not reading it) and a client waiting for its 100 Continue are not
timed out.

The engine tests run a `GatewayServer` in this process against scripted raw upstreams (the helpers
of test_gateway_proxy); the last test runs the real server with AGENTCELL_BODY_TIMEOUT_S=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from tests.conftest import TEST_API_KEY, ServerFactory
from tests.integration.test_gateway_limits import connect, is_closed, read_response
from tests.integration.test_gateway_proxy import (
    Client,
    MiB,
    RawUpstream,
    Reply,
    StaticRouter,
    raw_response,
    read_request,
    running_gateway,
)

TIMEOUT_S = 0.5
STALLED_HEADS = {
    "length": b"POST /up HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10,
    "chunked": b"POST /up HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
}


async def answer_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    """An upstream that reads each whole request and answers with its body's length."""
    while (request := await read_request(reader)) is not None:
        writer.write(raw_response(200, json.dumps({"received": len(request.body)}).encode()))


async def closed_by_gateway(client: Client) -> bool:
    """Whether the gateway closed (FIN) or dropped (reset) the client's connection."""
    try:
        return await client.at_eof()
    except ConnectionResetError:
        return True


def assert_body_timeout(reply: Reply) -> None:
    assert reply.status == 408
    envelope = reply.json()
    assert envelope["code"] == "timeout"
    assert f"stopped arriving for {TIMEOUT_S:g} s" in envelope["message"]
    assert reply.header(b"connection") == b"close"


@pytest.mark.parametrize("framing", sorted(STALLED_HEADS))
async def test_a_stalled_body_gets_408_and_the_connection_closes(framing: str) -> None:
    async with RawUpstream(answer_length) as upstream:
        router = StaticRouter(upstream.address)
        async with running_gateway(router, body_timeout_s=TIMEOUT_S) as (_, address):
            client = await Client.connect(address)
            client.send(STALLED_HEADS[framing])  # ...and nothing more
            assert_body_timeout(await client.reply())
            assert await closed_by_gateway(client)
            await asyncio.wait_for(upstream.saw_close.wait(), 5)  # the upstream request is dropped
            await client.aclose()
    assert router.completions[0][0] == 408


async def test_a_body_held_back_by_the_upstream_is_not_timed_out() -> None:
    """The upstream reads nothing for 3 body timeouts: the gateway pauses the client meanwhile,
    and that time is the gateway's, not the client's. The connection then idles past the body
    timeout between requests (the keep-alive timeout's time, not this one's) and still serves."""
    total = 64 * MiB  # more than every socket buffer and the gateway's write buffer hold
    sent = [0]
    sent_when_upstream_woke = [-1]

    async def read_late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await asyncio.sleep(3 * TIMEOUT_S)
        sent_when_upstream_woke[0] = sent[0]
        seen = 0
        while seen < length:
            seen += len(await reader.readexactly(min(MiB, length - seen)))
        writer.write(raw_response(200, json.dumps({"received": seen}).encode()))
        await answer_length(reader, writer, 0)

    async with (
        RawUpstream(read_late) as upstream,
        running_gateway(StaticRouter(upstream.address), body_timeout_s=TIMEOUT_S) as (_, address),
    ):
        client = await Client.connect(address)
        client.send(b"POST /up HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % total)

        async def send_body() -> None:
            for _ in range(total // MiB):
                client.send(b"u" * MiB)
                await client.writer.drain()
                sent[0] += MiB

        sender = asyncio.create_task(send_body())
        try:
            got = await client.reply()
            assert got.status == 200, got.body
            await sender
        finally:
            sender.cancel()
        assert got.json() == {"received": total}
        assert 0 <= sent_when_upstream_woke[0] < total, "the client was never held back"
        await asyncio.sleep(2 * TIMEOUT_S)
        assert (await client.request("POST", "/up", body=b"again")).json() == {"received": 5}
        await client.aclose()


async def answer_before_the_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    """An upstream that starts streaming its answer as soon as it has the request head."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    await reader.read()  # until the gateway closes the connection


async def test_a_body_stalled_after_the_response_began_drops_the_connection() -> None:
    """No 408 can follow a response head: the exchange ends as for a client gone, the upstream
    request is dropped and so is the client's connection."""
    async with RawUpstream(answer_before_the_body) as upstream:
        router = StaticRouter(upstream.address)
        async with running_gateway(router, body_timeout_s=TIMEOUT_S) as (_, address):
            client = await Client.connect(address)
            client.send(STALLED_HEADS["length"])
            while b"first" not in client.current.body:
                assert await client.pump()
            assert client.current.status == 200
            assert await closed_by_gateway(client)
            await asyncio.wait_for(upstream.saw_close.wait(), 5)
            await client.aclose()
    assert router.completions[0][0] == 200  # (its status as far as it went)


async def continue_late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    """An upstream that takes 2 body timeouts to say 100 Continue, then reads a 5-byte body."""
    while True:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(2 * TIMEOUT_S)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(raw_response(200, await reader.readexactly(5)))


async def test_a_client_waiting_for_100_continue_is_not_late_until_it_comes() -> None:
    head = b"POST /up HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    async with (
        RawUpstream(continue_late) as upstream,
        running_gateway(StaticRouter(upstream.address), body_timeout_s=TIMEOUT_S) as (_, address),
    ):
        prompt = await Client.connect(address)
        prompt.send(head)
        assert (await prompt.reply()).status == 100
        prompt.send(b"hello")
        got = await prompt.reply()
        assert (got.status, bytes(got.body)) == (200, b"hello")
        await prompt.aclose()
        # once the 100 Continue is relayed, the body is due
        silent = await Client.connect(address)
        silent.send(head)
        assert (await silent.reply()).status == 100
        assert_body_timeout(await silent.reply())
        await silent.aclose()


UVLOOP_SCENARIOS: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
    "stalled": functools.partial(test_a_stalled_body_gets_408_and_the_connection_closes, "length"),
    "held_back": test_a_body_held_back_by_the_upstream_is_not_timed_out,
}


@pytest.mark.parametrize("name", sorted(UVLOOP_SCENARIOS))
def test_on_uvloop(name: str) -> None:
    """The production event loop (whose clock is read once per loop turn)."""
    uvloop.run(UVLOOP_SCENARIOS[name]())


# --- the real server --------------------------------------------------------------------------


def test_the_server_times_out_a_stalled_body_and_serves_a_slow_steady_one(
    server_factory: ServerFactory,
) -> None:
    """AGENTCELL_BODY_TIMEOUT_S=1 on the real server: a JSON body that stops arriving gets the 408
    envelope and its connection closes, while one arriving a byte every 0.3 s for 3 s is served."""
    server = server_factory(driver="fake", env={"AGENTCELL_BODY_TIMEOUT_S": "1"})
    head = b"POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nx-api-key: %s\r\ncontent-type: application/json\r\n"
    head %= TEST_API_KEY.encode()
    body = b"{" + b" " * 8 + b"}"
    with contextlib.closing(connect(server)) as stalled, contextlib.closing(connect(server)) as slow:
        stalled.sendall(head + b"content-length: 1000\r\n\r\n{")
        slow.sendall(head + b"content-length: %d\r\n\r\n" % len(body))
        for byte in body:
            time.sleep(0.3)
            slow.sendall(bytes([byte]))
        status, _, answer = read_response(slow)
        assert status == 201, answer
        status, headers, answer = read_response(stalled)
        assert status == 408, answer
        envelope = json.loads(answer)
        assert envelope["code"] == "timeout"
        assert "stopped arriving for 1 s" in envelope["message"]
        assert headers["connection"] == "close"
        assert is_closed(stalled)
