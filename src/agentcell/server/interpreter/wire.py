"""The Jupyter messaging wire format (protocol 5.3), just what a client of one kernel needs.

A message on a ZMQ socket is `[ids…, b"<IDS|MSG>", hmac, header, parent_header, metadata,
content, buffers…]`; the HMAC-SHA256 over the four JSON frames is keyed per kernel. Signing costs
~6.5 µs a message here (13 µs with the JSON), so it stays on (a kernel refuses unsigned requests).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentcell.errors import Internal

DELIMITER = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.3"


@dataclass(frozen=True, slots=True)
class KernelMessage:
    """One message from a kernel, reduced to what an execution needs."""

    msg_type: str
    content: dict[str, Any]
    parent_id: str | None = None


class JupyterSession:
    """Signs requests and checks replies for one kernel connection."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._session = secrets.token_hex(16)

    def _sign(self, parts: list[bytes]) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def request(self, msg_type: str, content: dict[str, Any]) -> tuple[list[bytes], str]:
        """Frames of a new request, and its msg_id (replies name it as their parent)."""
        msg_id = secrets.token_hex(16)
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "session": self._session,
            "username": "agentcell",
            "date": datetime.now(UTC).isoformat(),
            "version": PROTOCOL_VERSION,
        }
        parts = [json.dumps(header).encode(), b"{}", b"{}", json.dumps(content).encode()]
        return [DELIMITER, self._sign(parts), *parts], msg_id

    def parse(self, frames: list[bytes]) -> KernelMessage:
        """A kernel's message; raises Internal when it is malformed or wrongly signed."""
        try:
            start = frames.index(DELIMITER) + 1
            signature, parts = frames[start], frames[start + 1 : start + 5]
        except (ValueError, IndexError):
            raise Internal("a kernel sent a message without the Jupyter delimiter") from None
        if len(parts) != 4 or not hmac.compare_digest(signature, self._sign(parts)):
            raise Internal("a kernel sent a message with a bad signature")
        try:  # bytes that are not UTF-8 (a surrogate-escaped name: "\udc80" went out as 0x80) as U+FFFD
            header, parent, content = (json.loads(p.decode(errors="replace")) for p in (*parts[:2], parts[3]))
        except ValueError:
            raise Internal("a kernel sent a message that is not JSON") from None
        parent_id = parent.get("msg_id") if isinstance(parent, dict) else None
        return KernelMessage(str(header.get("msg_type", "")), content, parent_id)
