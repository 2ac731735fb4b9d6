"""The gateway calling an ASGI app in its own process (`AppUpstream`, how the server reaches its
control plane): the same answers as through a socket, streaming both ways with backpressure, the
client's disconnect heard by the app, app failures answered, shutdown that does not wait forever.

Real sockets on the client side (raw HTTP/1.1 to a `GatewayServer` on 127.0.0.1), the echo app of
test_gateway_proxy in-process on the other.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvloop

from agentcell.server.gateway.asgi import serves_in_process
from agentcell.server.gateway.route import AccessRecord, AppUpstream, AsgiApp, RequestHead
from tests.integration.test_gateway_proxy import (
    AppState,
    Client,
    MiB,
    Receive,
    Scope,
    Send,
    StaticRouter,
    download_slowly,
    make_app,
    peak_rss,
    running_gateway,
)


def in_process(app: AsgiApp, **forward: Any) -> StaticRouter:
    return StaticRouter(AppUpstream(app), **forward)


async def test_requests_reach_the_app_and_come_back(tmp_path: Path) -> None:
    router = in_process(make_app(AppState()))
    async with running_gateway(router) as (_, address):
        client = await Client.connect(address)
        got = await client.request("POST", "/echo%20me?x=1", b"hello", ["X-Custom: Yes"])
        seen = got.json()
        assert got.status == 200 and got.header(b"content-length") == b"%d" % len(got.body)
        assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/echo me", "x=1")
        assert seen["body"] == "hello"
        assert seen["headers"]["x-custom"] == "Yes" and seen["headers"]["host"] == "gw.test"
        client.send(b"HEAD /echo HTTP/1.1\r\nHost: gw.test\r\n\r\n")  # headers only, then kept alive
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200") and b"content-length" in head.lower()
        client = Client(client.reader, client.writer)
        assert (await client.request("GET", "/again")).json()["path"] == "/again"
        await client.aclose()
    assert [c[0] for c in router.completions] == [200, 200, 200]


async def test_the_app_gets_the_request_id_the_access_log_records(tmp_path: Path) -> None:
    records: list[AccessRecord] = []
    async with running_gateway(in_process(make_app(AppState())), access_log=records.append) as (_, address):
        client = await Client.connect(address)
        given = (await client.request("GET", "/echo", headers=["X-Request-Id: trace-7"])).json()
        made = (await client.request("GET", "/echo")).json()
        await client.aclose()
    assert given["headers"]["x-request-id"] == "trace-7" == records[0].head.request_id
    assert made["headers"]["x-request-id"] == records[1].head.request_id != "trace-7"


async def test_a_rewritten_path_is_what_the_app_sees(tmp_path: Path) -> None:
    async with running_gateway(in_process(make_app(AppState()), rewrite_path=b"/inside")) as (_, address):
        client = await Client.connect(address)
        assert (await client.request("GET", "/outside?q=2")).json()["path"] == "/inside"
        await client.aclose()


async def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async with running_gateway(in_process(make_app(AppState()))) as (_, address):
        client = await Client.connect(address)
        client.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: gw.test\r\n\r\n" % i for i in range(5)))
        assert [(await client.reply()).json()["path"] for _ in range(5)] == [f"/{i}" for i in range(5)]
        await client.aclose()


async def test_unsized_answers_are_chunked_and_events_are_not_held(tmp_path: Path) -> None:
    state = AppState()
    async with running_gateway(in_process(make_app(state))) as (_, address):
        client = await Client.connect(address)
        chunked = await client.request("GET", "/chunked")
        assert chunked.header(b"transfer-encoding") == b"chunked" and bytes(chunked.body) == b"one,two,three"
        client.send(b"GET /sse HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        while b"data: first\n\n" not in client.current.body:
            assert await client.pump()
        assert not client.replies and not state.release.is_set()
        state.release.set()
        assert bytes((await client.reply()).body) == b"data: first\n\ndata: second\n\n"
        await client.aclose()


async def test_a_large_download_to_a_slow_reader_is_not_buffered(tmp_path: Path) -> None:
    async with running_gateway(in_process(make_app(AppState()))) as (_, address):
        growth = await download_slowly(address, 128)
        assert growth < 48 * MiB, f"RSS grew by {growth // MiB} MiB"


async def slow_counter(scope: Scope, receive: Receive, send: Send) -> None:
    """Counts the request body, taking it slower than the client sends."""
    received = 0
    while True:
        message = await receive()
        received += len(message.get("body", b""))
        await asyncio.sleep(0.0002)
        if not message.get("more_body"):
            break
    body = json.dumps({"received": received}).encode()
    headers = [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def test_a_large_upload_to_a_slow_app_is_not_buffered(tmp_path: Path) -> None:
    async with running_gateway(in_process(slow_counter)) as (_, address):
        client = await Client.connect(address)
        size = 256 * MiB
        async with peak_rss() as rss:
            client.send(b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // MiB):
                client.send(b"u" * MiB)
                await client.writer.drain()
            got = await client.reply()
        assert got.json() == {"received": size}
        assert rss[1] - rss[0] < 48 * MiB, f"RSS grew by {(rss[1] - rss[0]) // MiB} MiB"
        await client.aclose()


async def test_the_app_hears_the_client_leave(tmp_path: Path) -> None:
    heard: list[str] = []

    async def waits_for_disconnect(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"tick", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        heard.append("disconnect")
        await send({"type": "http.response.body", "body": b"dropped"})  # after the client left: dropped

    async with running_gateway(in_process(waits_for_disconnect)) as (server, address):
        client = await Client.connect(address)
        client.send(b"GET /stream HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        while b"tick" not in client.current.body:
            assert await client.pump()
        await client.aclose()
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert heard == ["disconnect"]
        assert server.connection_count == 0


async def test_app_failures_are_answered_and_the_server_goes_on(tmp_path: Path) -> None:
    async def faulty(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/raise":
            raise RuntimeError("broken app")
        if scope["path"] == "/mid-stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"part", "more_body": True})
            raise RuntimeError("broken mid-stream")
        if scope["path"] == "/short":
            headers = [(b"content-length", b"10")]  # then only 5 bytes
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"12345"})
            return
        if scope["path"] == "/ok":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        # any other path: returns without answering

    async with running_gateway(in_process(faulty)) as (_, address):
        for path in ("/raise", "/silent"):
            client = await Client.connect(address)
            got = await client.request("GET", path)
            assert got.status == 500 and got.json()["code"] == "internal", path
            assert (await client.request("GET", "/ok")).status == 204  # the connection is still good
            await client.aclose()
        for path, cut_short in (("/mid-stream", b"4\r\npart\r\n"), ("/short", b"\r\n\r\n12345")):
            client = await Client.connect(address)  # a response under way ends with the connection
            client.send(f"GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n".encode())
            everything = await asyncio.wait_for(client.reader.read(), 10)  # until the gateway closes
            assert everything.startswith(b"HTTP/1.1 200") and everything.endswith(cut_short), everything
            await client.aclose()
        client = await Client.connect(address)
        assert (await client.request("GET", "/ok")).status == 204
        await client.aclose()


async def test_closing_the_server_ends_calls_that_ignore_the_disconnect(tmp_path: Path) -> None:
    started = asyncio.Event()
    cancelled: list[bool] = []

    async def stubborn(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async with running_gateway(in_process(stubborn)) as (_, address):
        client = await Client.connect(address)
        client.send(b"GET / HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        await asyncio.wait_for(started.wait(), 5)
    assert cancelled == [True]
    await client.aclose()


def head(*headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"POST", b"/x", b"", list(headers), dict(headers), "127.0.0.1")


def test_only_plain_requests_are_served_in_process() -> None:
    assert serves_in_process(head((b"content-length", b"5")))
    assert not serves_in_process(head((b"transfer-encoding", b"chunked")))
    assert not serves_in_process(head((b"upgrade", b"websocket")))
    assert not serves_in_process(head((b"expect", b"100-continue")))


def test_on_uvloop(tmp_path: Path) -> None:
    """The production event loop: the streaming and failure scenarios again, run by uvloop."""
    for scenario in (
        test_requests_reach_the_app_and_come_back,
        test_unsized_answers_are_chunked_and_events_are_not_held,
        test_a_large_upload_to_a_slow_app_is_not_buffered,
        test_app_failures_are_answered_and_the_server_goes_on,
    ):
        uvloop.run(scenario(tmp_path))


def test_the_server_takes_plain_and_chunked_uploads_by_their_two_paths(api: httpx.Client) -> None:
    """Through a real server: a sized upload is served in-process, a chunked one through uvicorn's
    socket; both land whole, and the control plane answers the same way."""
    sandbox = api.post("/v1/sandboxes", json={"timeout_s": 60}).json()["id"]
    try:
        files = f"/v1/sandboxes/{sandbox}/files"
        data = bytes(range(256)) * 4096  # 1 MiB
        sized = api.put(files, params={"path": "sized.bin"}, content=data)

        def pieces() -> Iterator[bytes]:
            for start in range(0, len(data), 64 * 1024):
                yield data[start : start + 64 * 1024]

        chunked = api.put(files, params={"path": "chunked.bin"}, content=pieces())
        assert chunked.request.headers.get("transfer-encoding") == "chunked"
        assert sized.status_code == chunked.status_code == 200, (sized.text, chunked.text)
        for name in ("sized.bin", "chunked.bin"):
            assert api.get(files, params={"path": name}).content == data, name
        missing = api.get(files, params={"path": "nowhere.bin"})  # errors keep their envelope
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    finally:
        api.delete(f"/v1/sandboxes/{sandbox}")
