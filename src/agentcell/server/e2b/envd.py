"""envd, the in-sandbox daemon E2B's SDK talks to on port 49983, served by the control plane:
Connect RPC for `process.Process` and `filesystem.Filesystem`, `/files` and `/health`.

Every request must carry the sandbox's access token (`X-Access-Token`), except a `/files` request
with a valid signature (E2B's signed URLs). Commands and file access run as the sandbox user;
asking for another user (`Authorization: Basic root:`) is refused.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from agentcell.errors import InvalidArgument, PermissionDenied, Unauthenticated
from agentcell.server.api.multipart import filename_of, multipart_files
from agentcell.server.api.streaming import StreamingResponse
from agentcell.server.e2b import connect
from agentcell.server.e2b.connect import RpcError
from agentcell.server.e2b.entries import entry_info
from agentcell.server.e2b.filesystem import FilesystemService
from agentcell.server.e2b.process import ProcessService
from agentcell.server.e2b.registry import E2bRegistry
from agentcell.server.e2b.streams import bounded, enveloped, stream_error
from agentcell.server.e2b.target import ACCESS_TOKEN_HEADER, TRAFFIC_TOKEN_HEADER, target_of
from agentcell.server.sandbox.driver import SANDBOX_USER
from agentcell.server.scheduler.sandboxes import Sandbox
from agentcell.server.scheduler.terminals import TerminalService

router = APIRouter()
Message = dict[str, Any]
Unary = Callable[["Services", Sandbox, Message], Awaitable[Message]]
Stream = Callable[["Services", Sandbox, Message, float | None], Awaitable[AsyncIterator[Message]]]
MAX_UPLOAD_FILES = 1000


class Services:
    def __init__(self, registry: E2bRegistry, terminals: TerminalService | None = None) -> None:
        self.registry = registry
        self.process = ProcessService(registry, terminals)
        self.filesystem = FilesystemService(registry)


def services(request: Request) -> Services:
    found: Services = request.app.state.envd
    return found


async def _list(s: Services, sandbox: Sandbox, _: Message) -> Message:
    return s.process.list(sandbox)


async def _signal(s: Services, sandbox: Sandbox, m: Message) -> Message:
    return s.process.send_signal(sandbox, m)


async def _update(s: Services, sandbox: Sandbox, m: Message) -> Message:
    return s.process.update(sandbox, m)


UNARY: dict[str, Unary] = {
    "process.Process/List": _list,
    "process.Process/SendInput": lambda s, sbx, m: s.process.send_input(sbx, m),
    "process.Process/CloseStdin": lambda s, sbx, m: s.process.close_stdin(sbx, m),
    "process.Process/SendSignal": _signal,
    "process.Process/Update": _update,
    "filesystem.Filesystem/Stat": lambda s, sbx, m: s.filesystem.stat(sbx, m),
    "filesystem.Filesystem/ListDir": lambda s, sbx, m: s.filesystem.list_dir(sbx, m),
    "filesystem.Filesystem/MakeDir": lambda s, sbx, m: s.filesystem.make_dir(sbx, m),
    "filesystem.Filesystem/Move": lambda s, sbx, m: s.filesystem.move(sbx, m),
    "filesystem.Filesystem/Remove": lambda s, sbx, m: s.filesystem.remove(sbx, m),
    "filesystem.Filesystem/CreateWatcher": lambda s, sbx, m: s.filesystem.create_watcher(sbx, m),
    "filesystem.Filesystem/GetWatcherEvents": lambda s, sbx, m: s.filesystem.get_watcher_events(sbx, m),
    "filesystem.Filesystem/RemoveWatcher": lambda s, sbx, m: s.filesystem.remove_watcher(sbx, m),
}


async def _start(
    s: Services, sandbox: Sandbox, m: Message, deadline_s: float | None
) -> AsyncIterator[Message]:
    return await s.process.start(sandbox, m, deadline_s)


async def _connect(
    s: Services, sandbox: Sandbox, m: Message, deadline_s: float | None
) -> AsyncIterator[Message]:
    return bounded(s.process.connect(sandbox, m), deadline_s)


async def _watch(
    s: Services, sandbox: Sandbox, m: Message, deadline_s: float | None
) -> AsyncIterator[Message]:
    return bounded(await s.filesystem.watch_dir(sandbox, m), deadline_s)


STREAMS: dict[str, Stream] = {
    "process.Process/Start": _start,
    "process.Process/Connect": _connect,
    "filesystem.Filesystem/WatchDir": _watch,
}
STREAM_INPUT = "process.Process/StreamInput"


def check_user(request: Request) -> None:
    """E2B sends `Authorization: Basic base64("<user>:")` when a call names a user."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return
    try:
        user = base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidArgument("the Authorization header is not valid Basic credentials") from None
    if user not in ("", SANDBOX_USER):
        raise PermissionDenied(
            f"commands and files run as {SANDBOX_USER!r} on agentcell; {user!r} is not available "
            "(root inside a sandbox needs user namespaces)"
        )


def authorized_sandbox(request: Request, *, traffic_ok: bool = False) -> Sandbox:
    """The request's running sandbox, once its envd access token checks out; with `traffic_ok`,
    its traffic access token does too (the code interpreter's context calls, which E2B's SDK
    makes with that token alone)."""
    target = target_of(request)
    registry = services(request).registry
    sandbox = registry.running(target.sandbox_id)
    traffic = request.headers.get(TRAFFIC_TOKEN_HEADER) if traffic_ok else None
    if traffic is not None and registry.traffic.is_token(sandbox.id, traffic):
        return sandbox
    if not registry.is_token(sandbox.id, request.headers.get(ACCESS_TOKEN_HEADER)):
        raise Unauthenticated("missing or wrong X-Access-Token for this sandbox (see envdAccessToken)")
    return sandbox


# -- Connect RPC -----------------------------------------------------------------------------------


@router.post("/{service}/{method}")
async def rpc(request: Request, service: str, method: str) -> Response:
    name = f"{service}/{method}"
    if name == STREAM_INPUT:
        return await _client_stream(request)
    await request.body()  # read before any answer, so the connection stays usable for the next call
    stream = STREAMS.get(name)
    if stream is None and name not in UNARY:
        raise RpcError("unimplemented", f"{name} is not a method of envd's process or filesystem service")
    media = connect.media_type(request.headers.get("content-type"))
    expected = connect.STREAM_JSON if stream else connect.UNARY_JSON
    if media != expected:
        return _unsupported_codec(media, expected)
    if stream is None:
        sandbox = _checked(request)
        reply = await UNARY[name](services(request), sandbox, connect.decode_message(await request.body()))
        return JSONResponse(reply)
    try:
        return await _stream(stream, request)
    except Exception as exc:  # a stream's errors travel in its end-of-stream envelope, status 200
        return _stream_reply(_single(connect.end_of_stream(stream_error(exc))))


def _checked(request: Request) -> Sandbox:
    check_user(request)
    return authorized_sandbox(request)


async def _stream(stream: Stream, request: Request) -> Response:
    deadline_s = connect.deadline_s(request.headers.get("connect-timeout-ms"))
    sandbox = _checked(request)
    messages = connect.decode_envelopes(await request.body())
    if len(messages) != 1:
        raise RpcError("invalid_argument", f"a server-streaming call takes one message, got {len(messages)}")
    replies = await stream(services(request), sandbox, messages[0], deadline_s)
    return _stream_reply(enveloped(replies))


async def _client_stream(request: Request) -> Response:
    """StreamInput: the request's envelopes are handled as they arrive; one reply, then the end."""
    media = connect.media_type(request.headers.get("content-type"))
    if media != connect.STREAM_JSON:
        return _unsupported_codec(media, connect.STREAM_JSON)
    try:
        sandbox = _checked(request)
        reply = await services(request).process.stream_input(sandbox, _request_messages(request))
        body = connect.envelope(reply) + connect.end_of_stream()
    except Exception as exc:
        body = connect.end_of_stream(stream_error(exc))
        with contextlib.suppress(Exception):  # the rest of the input, so the connection stays usable
            async for _ in request.stream():
                pass
    return _stream_reply(_single(body))


async def _request_messages(request: Request) -> AsyncIterator[Message]:
    reader = connect.EnvelopeReader()
    async for chunk in request.stream():
        for message in reader.feed(chunk):
            yield message
        if reader.ended:
            return
    reader.finish()


def _stream_reply(body: AsyncIterator[bytes]) -> Response:
    return StreamingResponse(body, media_type=connect.STREAM_JSON, headers={"cache-control": "no-store"})


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _unsupported_codec(media: str, expected: str) -> Response:
    error = RpcError("internal", f"content-type {media or '(none)'} is not supported; send {expected}")
    return JSONResponse(error.wire(), status_code=415, headers={"accept-post": expected})


# -- /files and /health ----------------------------------------------------------------------------


def file_sandbox(request: Request, path: str, operation: str) -> Sandbox:
    """The sandbox of a /files request: by access token, or by a signed URL's signature."""
    query = request.query_params
    signature = query.get("signature")
    if signature is None:
        return authorized_sandbox(request)
    registry = services(request).registry
    sandbox_id = target_of(request).sandbox_id
    candidates = [registry.running(sandbox_id)] if sandbox_id else registry.all_running()
    expiration = query.get("signature_expiration")
    user = query.get("username", "")
    for sandbox in candidates:
        expected = registry.file_signature(sandbox.id, path, operation, user, expiration)
        if hmac.compare_digest(expected, signature):
            break
    else:
        raise Unauthenticated("the file URL's signature does not match (or its sandbox has ended)")
    if registry.expired(expiration):
        raise Unauthenticated("signature is already expired")  # envd's words
    return sandbox


def _required_path(request: Request) -> str:
    path = request.query_params.get("path", "")
    if not path:
        raise InvalidArgument("path is required")
    return path


@router.get("/files")
async def download(request: Request) -> Response:
    path = _required_path(request)
    check_user(request)
    sandbox = file_sandbox(request, path, "read")
    chunks = services(request).registry.sandboxes.files(sandbox.id).read(path)
    first = await anext(chunks, b"")

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(body(), media_type="application/octet-stream")


async def _gunzipped(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        async for chunk in chunks:
            if out := inflater.decompress(chunk):
                yield out
        if tail := inflater.flush():
            yield tail
    except zlib.error as exc:
        raise InvalidArgument(f"the gzip body is damaged: {exc}") from None


@router.post("/files")
async def upload(request: Request) -> list[Message]:
    path = request.query_params.get("path")
    check_user(request)
    media = connect.media_type(request.headers.get("content-type"))
    if media == "multipart/form-data":
        sandbox = file_sandbox(request, path or "", "write")
        return await _upload_multipart(request, sandbox, path)
    if media != "application/octet-stream":
        raise InvalidArgument("send multipart/form-data or application/octet-stream")
    if not path:
        raise InvalidArgument("path is required for an application/octet-stream upload")
    sandbox = file_sandbox(request, path, "write")
    chunks: AsyncIterator[bytes] = request.stream()
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding == "gzip":
        chunks = _gunzipped(chunks)
    elif encoding != "identity":
        raise InvalidArgument(f"Content-Encoding {encoding!r} is not supported; use gzip or none")
    written = await services(request).registry.sandboxes.files(sandbox.id).write(path, chunks)
    return [_written(written)]


async def _upload_multipart(request: Request, sandbox: Sandbox, path: str | None) -> list[Message]:
    """The `file` parts, each streamed into the sandbox as it arrives (other fields are skipped)."""
    files = services(request).registry.sandboxes.files(sandbox.id)
    parts = multipart_files(request)
    written: list[Message] = []
    async for name, filename in parts.files():
        if name != b"file":
            await parts.skip()
            continue
        if path and written:
            raise InvalidArgument(
                "give one 'file' part with ?path=, or name each part's path in its filename"
            )
        if len(written) == MAX_UPLOAD_FILES:
            raise InvalidArgument(f"an upload holds at most {MAX_UPLOAD_FILES} files; send more in another")
        destination = path or filename_of(filename, "a 'file' part")
        written.append(_written(await files.write(destination, parts.data())))
    if not written:
        raise InvalidArgument("the multipart body has no 'file' part")
    return written


def _written(stat: Any) -> Message:
    info = entry_info(stat)
    return {"name": info["name"], "type": "file", "path": info["path"]}


@router.get("/health", status_code=204)
async def health(request: Request) -> Response:
    services(request).registry.running(target_of(request).sandbox_id)
    return Response(status_code=204)
