"""/v1/sandboxes/{id}/files: streamed read and write, upload, archive, stat, list, mkdir, rename, remove,
watch."""

from __future__ import annotations

import posixpath
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response

from agentcell.errors import InvalidArgument
from agentcell.protocol.files import FileEntry, FileList, MakeDir, Rename, wire_text
from agentcell.server.api.archive import archive_entries, tar_stream
from agentcell.server.api.deps import Sandboxes, Watches
from agentcell.server.api.multipart import filename_of, multipart_files
from agentcell.server.api.streaming import NDJSON, StreamingResponse, ndjson_batches
from agentcell.server.sandbox.driver import FileStat

router = APIRouter(prefix="/v1/sandboxes/{sandbox_id}/files", tags=["files"])
PathQuery = Annotated[
    str, Query(min_length=1, max_length=4096, description="absolute, or relative to /home/user")
]
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
    parts = multipart_files(request)
    written: list[FileEntry] = []
    async for _, filename in parts.files():
        if len(written) == MAX_UPLOAD_FILES:
            raise InvalidArgument(f"an upload holds at most {MAX_UPLOAD_FILES} files; send more in another")
        target = posixpath.join(dir, filename_of(filename, "an upload part"))
        written.append(entry(await files.write(target, parts.data())))
    return FileList(entries=written)


@router.get(
    "/archive", response_class=StreamingResponse, responses={200: {"content": {"application/x-tar": {}}}}
)
async def download_archive(sandbox_id: str, path: PathQuery, sandboxes: Sandboxes) -> StreamingResponse:
    files = sandboxes.files(sandbox_id)
    root = await files.stat(path)
    if root.type == "other":  # a tar of it would hold nothing at all
        raise InvalidArgument(
            f"{wire_text(root.path)} is a FIFO, socket or device: archive a file or directory"
        )
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


@router.get(
    "/watch",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {NDJSON: {}},
            "description": "One JSON object a line: `start` (the watched directory), then `event`s (kind, "
            "name relative to it, absolute path), `overflow` once if changes were dropped, `keepalive` "
            "after 15 s without one, and a last `end` (reason) when the directory or the sandbox goes",
        }
    },
)
async def watch_dir(
    sandbox_id: str,
    path: PathQuery,
    watches: Watches,
    recursive: Annotated[bool, Query(description="also watch the directories below it")] = False,
) -> StreamingResponse:
    """Changes to a directory as they happen, until the client leaves or the `end`. 400 for a
    file, 404 for a missing directory, 429 `quota_exceeded` past 32 watches of one sandbox."""
    lines = ndjson_batches(await watches.open(sandbox_id, path, recursive))
    return StreamingResponse(lines, media_type=NDJSON, headers={"cache-control": "no-store"})


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
