"""Execution: turns one execution's kernel messages into our typed events, within an output budget.

Past `max_output_bytes` (stream text and result bundles together) output is dropped: stream text
is kept up to the budget (cut on a character boundary), a result bundle that does not fit is
dropped whole (as is one the Python kernel left out for being larger than a kernel message may
be); one marker line says so, nothing follows it, and the `end` event counts the bytes dropped
(exactly for stream text; about the encoded size for a bundle). Errors and `end` always get
through.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from agentcell.protocol.code import (
    CodeEndEvent,
    CodeErrorEvent,
    CodeOutputEvent,
    CodeResultEvent,
    EndStatus,
)
from agentcell.protocol.files import wire_text
from agentcell.server.interpreter.wire import KernelMessage

CodeEventModel = CodeOutputEvent | CodeResultEvent | CodeErrorEvent | CodeEndEvent
Stream = Literal["stdout", "stderr"]
MAX_TRACEBACK_CHARS = 64 * 1024
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _bundle_size(data: dict[str, Any]) -> int:
    return sum(len(_utf8(v) if isinstance(v, str) else _utf8(json.dumps(v))) for v in data.values())


def _utf8(text: str) -> bytes:
    # surrogatepass: JSON can carry a lone surrogate ("\ud800"), which strict UTF-8 refuses
    return text.encode(errors="surrogatepass")


def _unicode_bundle(data: dict[str, Any]) -> dict[str, Any]:
    return {mime: wire_text(v) if isinstance(v, str) else v for mime, v in data.items()}


class Execution:
    """One run of code in a context, from the first message to the `end` event."""

    def __init__(self, context_id: str, max_output_bytes: int, started_at: float) -> None:
        self.context_id = context_id
        self._budget = max_output_bytes
        self._started_at = started_at
        self.output_bytes = 0
        self.truncated_bytes = 0
        self.execution_count: int | None = None
        self.failed = False

    def events(self, message: KernelMessage) -> list[CodeEventModel]:
        """Our events for one kernel message (none for the ones clients do not see)."""
        content = message.content
        kind = message.msg_type
        if kind == "stream":
            stream: Stream = "stderr" if content.get("name") == "stderr" else "stdout"
            return self._bounded(wire_text(str(content.get("text", ""))), stream)
        if kind in ("execute_result", "display_data", "update_display_data"):
            return self._result(content, is_main=kind == "execute_result")
        if kind == "error":
            self.failed = True
            return [self.error(str(content.get("ename", "")), str(content.get("evalue", "")), content)]
        if kind == "execute_reply":
            count = content.get("execution_count")
            self.execution_count = count if isinstance(count, int) else None
            self.failed |= content.get("status") == "error"
        return []

    def _bounded(self, text: str, stream: Stream) -> list[CodeEventModel]:
        """The text, or (at the budget) as much of it as fits, cut on a character boundary, then
        the marker. ipykernel merges output into large messages, so the cut falls inside one."""
        data = _utf8(text)
        if self.truncated_bytes:
            return self._drop(len(data), stream)
        room = self._budget - self.output_bytes
        if len(data) <= room:
            self.output_bytes += len(data)
            return [CodeOutputEvent(type=stream, text=text)]
        kept = data[:room].decode(errors="ignore")  # drops only the character cut in two
        kept_bytes = len(_utf8(kept))
        self.output_bytes += kept_bytes
        head = [CodeOutputEvent(type=stream, text=kept)] if kept else []
        return head + self._drop(len(data) - kept_bytes, stream)

    def _drop(self, size: int, stream: Stream) -> list[CodeEventModel]:
        first = self.truncated_bytes == 0
        self.truncated_bytes += size
        if not first:
            return []
        marker = f"\n[agentcell: output truncated after {self._budget} bytes; the rest is dropped]\n"
        return [CodeOutputEvent(type=stream, text=marker)]

    def _result(self, content: dict[str, Any], *, is_main: bool) -> list[CodeEventModel]:
        left_out = content.get("agentcell_dropped_bytes")  # by our kernel: too large for one message
        if isinstance(left_out, int) and left_out > 0:
            return self._drop(left_out, "stdout")
        data = content.get("data")
        if not isinstance(data, dict) or not data:
            return []
        size = _bundle_size(data)
        if self.truncated_bytes or self.output_bytes + size > self._budget:  # a bundle is not cut
            return self._drop(size, "stdout")
        self.output_bytes += size
        return [CodeResultEvent(data=_unicode_bundle(data), is_main_result=is_main)]

    @staticmethod
    def error(name: str, value: str, content: dict[str, Any] | None = None) -> CodeErrorEvent:
        lines = (content or {}).get("traceback") or []
        text = "\n".join(str(line) for line in lines) if isinstance(lines, list) else str(lines)
        traceback = ANSI.sub("", text)[-MAX_TRACEBACK_CHARS:]
        return CodeErrorEvent(name=wire_text(name), value=wire_text(value), traceback=wire_text(traceback))

    def end(self, status: EndStatus | None, now: float, *, restarted: bool = False) -> CodeEndEvent:
        final: EndStatus = status or ("error" if self.failed else "ok")
        return CodeEndEvent(
            context_id=self.context_id,
            status=final,
            execution_count=self.execution_count,
            duration_ms=round((now - self._started_at) * 1000, 3),
            timed_out=final == "timeout",
            restarted=restarted,
            truncated_bytes=self.truncated_bytes,
        )
