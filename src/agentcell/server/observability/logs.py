"""Logging setup: JSON lines (AGENTCELL_LOG_FORMAT=json) or text, every record carrying the
request, tenant, session and instance ids known where it was logged.

Ids are bound in contextvars (`bind`): a task inherits its creator's ids and may add its own
(a session's start binds the session id for everything it logs, in every task it spawns). Called
once by the entry point; nothing is configured at import.

What is never logged above DEBUG: user code, commands, env values and file contents. Log ids,
sizes, counts, names of things and exit codes instead.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Literal, TextIO

LogFormat = Literal["text", "json"]
CONTEXT_FIELDS = ("request_id", "tenant", "session", "instance")

_context: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "agentcell_log_context", default=None
)


def bind(**ids: str | None) -> None:
    """Add ids to the current context (this task and the tasks it creates from now on)."""
    merged = dict(_context.get() or {})
    merged.update({k: v for k, v in ids.items() if v is not None})
    _context.set(merged)


def bound() -> Mapping[str, str]:
    return _context.get() or {}


class ContextFilter(logging.Filter):
    """Copies the bound ids onto each record (`record.request_id`, …; "-" when unknown).
    `extra` contextvars (e.g. the control plane's request id) fill ids the context lacks."""

    def __init__(self, extra: Mapping[str, contextvars.ContextVar[str]] | None = None) -> None:
        super().__init__()
        self._extra = dict(extra or {})

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _context.get() or {}
        for name in CONTEXT_FIELDS:
            value = ids.get(name)
            if value is None and name in self._extra:
                value = self._extra[name].get()
            setattr(record, name, value or "-")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ids known, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, "-")
            if value != "-":
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(session)s %(instance)s]: %(message)s"


def setup_logging(
    level: str,
    fmt: LogFormat = "text",
    extra: Mapping[str, contextvars.ContextVar[str]] | None = None,
) -> logging.StreamHandler[TextIO]:
    """Configure the root logger with one stderr handler. Returns the handler (tests remove it).

    Records carry no caller, thread or process fields (no format here uses them): looking them up
    was a third of what a log line cost the event loop (the logging HOWTO's "Optimization")."""
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(extra))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
