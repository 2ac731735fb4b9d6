"""A multipart/form-data body read as a stream of file parts, for uploads into a sandbox.

Each part's bytes go on to the caller as they arrive: nothing is spooled on the server's disk (as
`Request.form()` would spool each file, whole, before a full sandbox disk could refuse it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from agentcell.errors import InvalidArgument

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

UPLOAD_CHUNK_BYTES = 1 << 20


class MultipartFiles:
    """The parts of a multipart/form-data body, read off the request only as the caller consumes
    them: each file streams straight into the sandbox, never spooled on the server's disk (as
    `request.form()` would spool it, whole, before a full sandbox disk could refuse it)."""

    def __init__(self, body: AsyncIterator[bytes], boundary: bytes) -> None:
        self._body = body
        self._events: deque[tuple[str, bytes]] = deque()
        self._ended = False
        self._parser = MultipartParser(boundary, self._callbacks())

    def _callbacks(self) -> MultipartCallbacks:
        def mark(kind: str) -> Callable[[], None]:
            return lambda: self._events.append((kind, b""))

        def piece(kind: str) -> Callable[[bytes, int, int], None]:
            return lambda data, start, end: self._events.append((kind, data[start:end]))

        return {
            "on_part_begin": mark("begin"),
            "on_header_field": piece("field"),
            "on_header_value": piece("value"),
            "on_header_end": mark("header_end"),
            "on_headers_finished": mark("headers"),
            "on_part_data": piece("data"),
            "on_part_end": mark("end"),
        }

    async def files(self) -> AsyncIterator[tuple[bytes | None, bytes | None]]:
        """Each part's form field name and filename (None when missing); read its `data()` (or
        `skip()` it) before the next."""
        while (event := await self._next()) is not None:
            if event[0] == "begin":
                disposition = (await self._headers()).get(b"content-disposition", b"")
                options = parse_options_header(disposition)[1]
                yield options.get(b"name"), options.get(b"filename")

    async def skip(self) -> None:
        """Read past the current part."""
        async for _ in self.data():
            pass

    async def data(self) -> AsyncIterator[bytes]:
        """The current part's bytes, gathered into pieces of about UPLOAD_CHUNK_BYTES (fewer,
        larger writes into the sandbox than the request's own chunks would make)."""
        while (event := await self._next()) is not None and event[0] != "end":
            chunk = bytearray(event[1])
            while len(chunk) < UPLOAD_CHUNK_BYTES and await self._fill() and self._events[0][0] == "data":
                chunk += self._events.popleft()[1]
            if chunk:
                yield bytes(chunk)
        if event is None:
            raise InvalidArgument("the multipart body ended inside a part")

    async def _headers(self) -> dict[bytes, bytes]:
        headers: dict[bytes, bytes] = {}
        field = value = b""
        while (event := await self._next()) is not None and event[0] != "headers":
            kind, data = event
            if kind == "field":
                field += data
            elif kind == "value":
                value += data
            elif kind == "header_end":
                headers[field.lower()], field, value = value, b"", b""
        return headers

    async def _next(self) -> tuple[str, bytes] | None:
        return self._events.popleft() if await self._fill() else None

    async def _fill(self) -> bool:
        """Read and parse the body until an event is queued; False when the body has ended."""
        while not self._events and not self._ended:
            chunk = await anext(self._body, b"")
            self._ended = not chunk
            try:
                if chunk:
                    self._parser.write(chunk)
                else:
                    self._parser.finalize()
            except MultipartParseError as err:
                raise InvalidArgument(f"the multipart body is malformed: {err}") from None
        return bool(self._events)


def filename_of(raw: bytes | None, part: str) -> str:
    """A file part's filename (its destination path in the sandbox) as text; `part` names the part
    in the errors."""
    try:
        name = (raw or b"").decode()
    except UnicodeDecodeError:
        raise InvalidArgument(f"{part}'s filename must be UTF-8") from None
    if not name:
        raise InvalidArgument(f"{part} has no filename (its destination path)")
    return name


def multipart_files(request: Request) -> MultipartFiles:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidArgument("upload needs a multipart/form-data body with one part per file")
    return MultipartFiles(request.stream(), boundary)
