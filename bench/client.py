"""A lean asyncio HTTP/1.1 keep-alive client for benchmarks, so that the client's own cost (httpx
adds ~2 ms per request here) does not hide the server's. One connection per `LeanClient`."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any


class LeanClient:
    """`LeanClient(host, port)`, or `LeanClient(sock=...)` over an already connected socket."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None) -> None:
        self._host, self._port, self._sock = host, port, sock
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> LeanClient:
        if self._sock is not None:
            self._reader, self._writer = await asyncio.open_connection(sock=self._sock)
        else:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        assert self._reader is not None and self._writer is not None
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: {len(payload)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        if body is not None:
            head += "content-type: application/json\r\n"
        self._writer.write(head.encode() + b"\r\n" + payload)
        return await self._response()

    async def _response(self) -> tuple[int, bytes]:
        assert self._reader is not None
        status_line = await self._reader.readline()
        status = int(status_line.split()[1])
        headers: dict[bytes, bytes] = {}
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            return status, await self._reader.readexactly(int(headers[b"content-length"]))
        if headers.get(b"transfer-encoding") == b"chunked":
            return status, await self._chunks()
        return status, b""

    async def _chunks(self) -> bytes:
        assert self._reader is not None
        parts = []
        while (size := int((await self._reader.readline()).split(b";")[0], 16)) > 0:
            parts.append(await self._reader.readexactly(size))
            await self._reader.readline()
        await self._reader.readline()
        return b"".join(parts)
