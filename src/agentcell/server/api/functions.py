"""/v1/functions: deploy (a new version), get, list, delete."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from fastapi import APIRouter, Request, Response
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import UploadFile
from starlette.types import Message

from agentcell.errors import InvalidArgument, PayloadTooLarge
from agentcell.protocol.functions import FunctionConfig, FunctionInfo, FunctionList, FunctionName
from agentcell.server.api.deps import Scheduler
from agentcell.server.api.errors import describe_validation
from agentcell.server.api.tenancy import function_name, is_mine, shown_function
from agentcell.server.scheduler.code import room_bytes, short_of_disk
from agentcell.server.scheduler.function_quota import FunctionQuota
from agentcell.server.scheduler.scheduler import Scheduler as FunctionScheduler

router = APIRouter(prefix="/v1/functions", tags=["functions"])
MAX_ARCHIVE_BYTES = 512 << 20
MAX_CONFIG_BYTES = 16 << 20
"""room for the largest valid config: 256 env values of 32 KiB, JSON-escaped"""
MAX_DEPLOY_BYTES = MAX_ARCHIVE_BYTES + MAX_CONFIG_BYTES + (64 << 10)
CHUNK_BYTES = 1 << 20
DEPLOY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["config", "code"],
                    "properties": {
                        "config": {"type": "string", "description": "FunctionConfig as JSON"},
                        "code": {
                            "type": "string",
                            "format": "binary",
                            "description": "tar / tar.gz of the code",
                        },
                    },
                }
            }
        },
    }
}


def uploads_dir(state_dir: Path) -> Path:
    """Where a deploy's archive waits while it is unpacked (a killed server's leftovers there are
    removed at the next start: main.remove_stale_uploads)."""
    return state_dir / "uploads"


def parse_config(raw: object) -> FunctionConfig:
    if not isinstance(raw, str):
        raise InvalidArgument("the 'config' part must be a FunctionConfig JSON text field")
    try:
        return FunctionConfig.model_validate(json.loads(raw))
    except ValidationError as exc:  # (a ValueError: first)
        raise InvalidArgument(f"config: {describe_validation(exc)}") from None
    except (ValueError, RecursionError) as exc:  # syntax, a 4300-digit integer, nesting too deep
        raise InvalidArgument(f"config is not valid JSON: {exc}") from None


async def save_upload(upload: UploadFile, directory: Path, room: Callable[[Path], int] = room_bytes) -> Path:
    """Copy the uploaded archive to a file of ours for unpacking (see save_archive)."""
    return await save_archive(_read(upload), directory, room)


async def _read(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK_BYTES):
        yield chunk


async def save_archive(
    chunks: AsyncIterator[bytes], directory: Path, room: Callable[[Path], int] = room_bytes
) -> Path:
    """An archive's bytes in a file of ours in `directory`, bounded in size (MAX_ARCHIVE_BYTES) and
    by the node's free-space floor (`room`)."""
    fd, name = tempfile.mkstemp(dir=directory, suffix=".tar")
    try:
        with os.fdopen(fd, "wb") as out:
            await _copy(chunks, out, room, directory)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


async def _copy(
    chunks: AsyncIterator[bytes], out: BinaryIO, room: Callable[[Path], int], directory: Path
) -> None:
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_ARCHIVE_BYTES:
            raise PayloadTooLarge(f"code archive is larger than {MAX_ARCHIVE_BYTES >> 20} MiB")
        if len(chunk) > room(directory):
            raise short_of_disk()
        out.write(chunk)


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"deploy body is larger than {MAX_DEPLOY_BYTES >> 20} MiB: the code archive may be at most "
        f"{MAX_ARCHIVE_BYTES >> 20} MiB (leave dependencies out: install them at start-up, or build "
        "a template)"
    )


def bounded(request: Request, room: Callable[[Path], int] = room_bytes) -> Request:
    """The request with its body cut off at MAX_DEPLOY_BYTES, and at the free-space floor of the
    temporary directory (`room`, checked each MiB): the form parser spools file parts to a
    temporary file there, which must take neither a whole upload of any size first nor the
    disk's last space."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_DEPLOY_BYTES:
        raise _too_large()
    seen = 0
    receive = request.receive
    spool = Path(tempfile.gettempdir())

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        before, seen = seen, seen + len(message.get("body", b""))
        if seen > MAX_DEPLOY_BYTES:
            raise _too_large()
        if seen // CHUNK_BYTES > before // CHUNK_BYTES and room(spool) < CHUNK_BYTES:
            raise short_of_disk()
        return message

    return Request(request.scope, counted)


FUNCTION_NAME: TypeAdapter[str] = TypeAdapter(FunctionName)


def _validated_name(name: str) -> str:
    try:
        return FUNCTION_NAME.validate_python(name)
    except ValidationError:
        raise InvalidArgument(
            "function name must be 1-63 lowercase letters, digits or '-', starting with a letter; "
            f"got {name!r}"
        ) from None


@router.put("/{name}", openapi_extra=DEPLOY_BODY)
async def deploy_function(name: str, request: Request, scheduler: Scheduler) -> FunctionInfo:
    name = _validated_name(name)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidArgument(
            "deploy needs multipart/form-data with a 'config' JSON field and a 'code' tar file"
        )
    qualified = function_name(name)
    function_quota(request).check_count(qualified)  # before the upload: it may be large
    uploads = uploads_dir(Path(request.app.state.settings.state_dir))
    os.makedirs(uploads, exist_ok=True)
    async with bounded(request).form(max_files=1, max_fields=4, max_part_size=MAX_CONFIG_BYTES) as form:
        config = parse_config(form.get("config"))
        code = form.get("code")
        if not isinstance(code, UploadFile):
            raise InvalidArgument(
                "the 'code' part must be a file: a tar or tar.gz of the function's directory"
            )
        archive = await save_upload(code, uploads)
    uploaded = config.model_copy(update={"published_from": None})  # (not a sandbox's code)
    return await deploy_archive(function_quota(request), scheduler, qualified, uploaded, archive)


async def deploy_archive(
    quota: FunctionQuota, scheduler: FunctionScheduler, qualified: str, config: FunctionConfig, archive: Path
) -> FunctionInfo:
    """Deploy `archive` (removed afterwards) within the tenant's code budget."""
    try:
        async with quota.deploying(qualified) as budget:
            return shown_function((await scheduler.deploy(qualified, config, archive, budget)).info())
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(archive)


def function_quota(request: Request) -> FunctionQuota:
    """The app's FunctionQuota (tenants' max_functions and max_code_mb; app.py)."""
    quota: FunctionQuota = request.app.state.function_quota
    return quota


@router.get("")
async def list_functions(scheduler: Scheduler) -> FunctionList:
    mine = [f for f in scheduler.functions() if is_mine(f.name)]
    return FunctionList(functions=[shown_function(f.info()) for f in mine])


@router.get("/{name}")
async def get_function(name: str, scheduler: Scheduler) -> FunctionInfo:
    return shown_function(scheduler.function(function_name(name)).info())


@router.delete("/{name}", status_code=204)
async def delete_function(name: str, scheduler: Scheduler) -> Response:
    await scheduler.delete_function(function_name(name))
    return Response(status_code=204)
