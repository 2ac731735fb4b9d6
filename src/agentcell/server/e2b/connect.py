"""The Connect protocol (JSON codec) as envd speaks it: envelopes, error codes, deadlines.

Unary calls carry one JSON message (`application/json`) and answer one, or a non-2xx status with
`{"code", "message"}`. Server-streaming calls carry one enveloped message
(`application/connect+json`) and answer a stream of envelopes — `flags:u8 | length:u32be | JSON` —
ending in one end-of-stream envelope (flag 0x02) that holds the error, if any.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

from agentcell import errors

ENVELOPE = struct.Struct(">BI")
FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02
UNARY_JSON = "application/json"
STREAM_JSON = "application/connect+json"
MAX_MESSAGE_BYTES = 32 << 20

STATUS_BY_CODE = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}

CODE_BY_DOMAIN = {
    "invalid_argument": "invalid_argument",
    "unauthenticated": "unauthenticated",
    "permission_denied": "permission_denied",
    "not_found": "not_found",
    "conflict": "already_exists",
    "not_running": "failed_precondition",
    "workspace_corrupt": "failed_precondition",
    "payload_too_large": "resource_exhausted",
    "quota_exceeded": "resource_exhausted",
    "timeout": "deadline_exceeded",
    "unavailable": "unavailable",
    "internal": "internal",
}


class RpcError(Exception):
    """An error answer in Connect's terms (`code` is one of STATUS_BY_CODE's keys)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return STATUS_BY_CODE.get(self.code, 500)

    def wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_domain(cls, exc: errors.AgentcellError) -> RpcError:
        return cls(CODE_BY_DOMAIN.get(exc.code, "internal"), exc.message)


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def envelope(message: Mapping[str, Any], flags: int = 0) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return ENVELOPE.pack(flags, len(data)) + data


def end_of_stream(error: RpcError | None = None) -> bytes:
    return envelope({"error": error.wire()} if error else {}, FLAG_END_STREAM)


def decode_message(data: bytes) -> dict[str, Any]:
    """One JSON message; anything but a JSON object is `invalid_argument`."""
    try:
        message = json.loads(data) if data.strip() else {}
    except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError; depth: Recursion)
        raise RpcError("invalid_argument", f"the request message is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise RpcError("invalid_argument", "the request message must be a JSON object")
    return message


def decode_envelopes(body: bytes) -> list[dict[str, Any]]:
    """The messages of an enveloped request body (a server-streaming call sends exactly one)."""
    messages: list[dict[str, Any]] = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < ENVELOPE.size:
            raise RpcError("invalid_argument", "truncated envelope: fewer than 5 prefix bytes")
        flags, length = ENVELOPE.unpack_from(body, offset)
        offset += ENVELOPE.size
        if flags & FLAG_COMPRESSED:
            raise RpcError("internal", "compressed messages are not supported; send identity encoding")
        if length > MAX_MESSAGE_BYTES or offset + length > len(body):
            raise RpcError("invalid_argument", f"envelope declares {length} bytes; the body is shorter")
        data = body[offset : offset + length]
        offset += length
        if flags & FLAG_END_STREAM:
            break
        messages.append(decode_message(data))
    return messages


def deadline_s(header: str | None) -> float | None:
    """`connect-timeout-ms` in seconds; None when absent. A malformed value is `invalid_argument`."""
    if header is None or header == "":
        return None
    if not header.isdigit() or len(header) > 10:
        raise RpcError("invalid_argument", f"connect-timeout-ms must be a positive integer, got {header!r}")
    return max(int(header), 1) / 1000


class EnvelopeReader:
    """Envelopes of a request body read as it arrives (client streaming): `feed` returns the
    messages completed by a chunk; `ended` once the end-of-stream envelope came."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.ended = False

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        self._buffer += chunk
        messages: list[dict[str, Any]] = []
        while len(self._buffer) >= ENVELOPE.size and not self.ended:
            flags, length = ENVELOPE.unpack_from(self._buffer)
            if flags & FLAG_COMPRESSED:
                raise RpcError("internal", "compressed messages are not supported; send identity encoding")
            if length > MAX_MESSAGE_BYTES:
                raise RpcError(
                    "resource_exhausted", f"a message may hold {MAX_MESSAGE_BYTES} bytes, not {length}"
                )
            if len(self._buffer) < ENVELOPE.size + length:
                break
            data = bytes(self._buffer[ENVELOPE.size : ENVELOPE.size + length])
            del self._buffer[: ENVELOPE.size + length]
            if flags & FLAG_END_STREAM:
                self.ended = True
            else:
                messages.append(decode_message(data))
        return messages

    def finish(self) -> None:
        """The body ended: anything left over is a truncated envelope."""
        if self._buffer:
            raise RpcError("invalid_argument", "the request body ends inside an envelope")
