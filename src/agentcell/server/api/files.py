"""/v1/sandboxes/{id}/files: streamed read and write, upload, archive, stat, list, mkdir, rename, remove."""

from __future__ import annotations

import posixpath
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from agentcell.errors import InvalidArgument
from agentcell.protocol.files import FileEntry, FileList, MakeDir, Rename
from agentcell.server.api.archive import archive_entries, tar_stream
from agentcell.server.api.deps import Sandboxes
from agentcell.server.api.streaming import StreamingResponse
from agentcell.server.sandbox.driver import FileStat

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])
PathQuery = Annotated[
    str, Query(min_length=1, max_length=4096, description="absolute, or relative to /home/user")
]
UPLOAD_CHUNK_BYTES = 1 << 20
MAX_UPLOAD_FILES = 10000


def entry(stat: FileStat) -> FileEntry:
    return FileEntry(
        path=stat.path,
        name=stat.name,
        type=stat.type,
        size=stat.size,
        mode=stat.mode,
        mtime=stat.mtime,
        symlink_target=stat.symlink_target,
    )


async def _primed(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Start the stream now so that a missing file is an error envelope, not a broken 200."""
    first = await anext(chunks, b"")

    async def rest() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return rest()


@router.get(
    "", response_class=StreamingResponse, responses={200: {"content": {"application/octet-stream": {}}}}
)
async def read_file(sandbox_id: str, path: PathQuery, sandboxes: Sandboxes) -> StreamingResponse:
    stream = await _primed(sandboxes.files(sandbox_id).read(path))
    return StreamingResponse(stream, media_type="application/octet-stream")


@router.put(
    "", openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}}
)
async def write_file(sandbox_id: str, path: PathQuery, request: Request, sandboxes: Sandboxes) -> FileEntry:
    return entry(await sandboxes.files(sandbox_id).write(path, request.stream()))


class _Parts:
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

    async def filenames(self) -> AsyncIterator[bytes | None]:
        """Each part's filename (None if it has none); read its `data()` before the next."""
        while (event := await self._next()) is not None:
            if event[0] == "begin":
                disposition = (await self._headers()).get(b"content-disposition", b"")
                yield parse_options_header(disposition)[1].get(b"filename")

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


def _upload_parts(request: Request) -> _Parts:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise InvalidArgument("upload needs a multipart/form-data body with one part per file")
    return _Parts(request.stream(), boundary)


def _part_path(directory: str, filename: bytes | None) -> str:
    try:
        name = (filename or b"").decode()
    except UnicodeDecodeError:
        raise InvalidArgument("an upload part's filename must be UTF-8") from None
    if not name:
        raise InvalidArgument("every upload part must be a file with a filename (its destination path)")
    return posixpath.join(directory, name)


@router.post(
    "/upload", openapi_extra={"requestBody": {"content": {"multipart/form-data": {}}, "required": True}}
)
async def upload_files(
    sandbox_id: str,
    request: Request,
    sandboxes: Sandboxes,
    dir: Annotated[str, Query(min_length=1, max_length=4096)] = "/home/user",
) -> FileList:
    files = sandboxes.files(sandbox_id)
    parts = _upload_parts(request)
    written: list[FileEntry] = []
    async for filename in parts.filenames():
        if len(written) == MAX_UPLOAD_FILES:
            raise InvalidArgument(f"an upload holds at most {MAX_UPLOAD_FILES} files; send more in another")
        written.append(entry(await files.write(_part_path(dir, filename), parts.data())))
    return FileList(entries=written)


@router.get(
    "/archive", response_class=StreamingResponse, responses={200: {"content": {"application/x-tar": {}}}}
)
async def download_archive(sandbox_id: str, path: PathQuery, sandboxes: Sandboxes) -> StreamingResponse:
    files = sandboxes.files(sandbox_id)
    root = await files.stat(path)
    name = posixpath.basename(root.path.rstrip("/")) or "root"
    return StreamingResponse(
        tar_stream(files, root, await archive_entries(files, root)),
        media_type="application/x-tar",
        headers={"content-disposition": attachment(f"{name}.tar")},
    )


@router.get("/stat")
async def stat_file(sandbox_id: str, path: PathQuery, sandboxes: Sandboxes) -> FileEntry:
    return entry(await sandboxes.files(sandbox_id).stat(path))


@router.get("/list")
async def list_files(
    sandbox_id: str, path: PathQuery, sandboxes: Sandboxes, depth: Annotated[int, Query(ge=1, le=16)] = 1
) -> FileList:
    return FileList(entries=[entry(s) for s in await sandboxes.files(sandbox_id).list(path, depth)])


@router.post("/mkdir")
async def make_dir(sandbox_id: str, body: MakeDir, sandboxes: Sandboxes) -> FileEntry:
    return entry(await sandboxes.files(sandbox_id).make_dir(body.path))


@router.post("/rename")
async def rename(sandbox_id: str, body: Rename, sandboxes: Sandboxes) -> FileEntry:
    return entry(await sandboxes.files(sandbox_id).rename(body.src, body.dst))


@router.delete("", status_code=204)
async def remove(sandbox_id: str, path: PathQuery, sandboxes: Sandboxes) -> Response:
    await sandboxes.files(sandbox_id).remove(path)
    return Response(status_code=204)


def attachment(filename: str) -> str:
    """A Content-Disposition any name fits in: a printable-ASCII fallback (a control character
    in a header value is refused by the HTTP layer) plus RFC 5987's UTF-8 form."""
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
