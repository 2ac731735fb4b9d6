"""AccessLog: one line per request through the gateway, in the server's log format, written in
batches.

Through `logging`, a line cost 9 to 11 µs of the event loop's time (the caller's frame looked up, a
LogRecord with thread and process names, `strftime`, a flush to stderr per line): a third of the
gateway's own hop for a small function request, at the default level. Here what the caller has of
a request (the gateway's record, as it is) is kept with the time, and made into fields and a line
when the batch is written out: every FLUSH_S, or once FLUSH_LINES wait, whichever comes first,
and at `close()`. Formatting one line is an f-string with a timestamp prefix cached per second;
done for a whole batch at once it runs with warm caches, off every request's path (it was a tenth
of the gateway's CPU under load, formatted per request; reading the fields out of the record per
request was another 4%).

Lines look like the other log lines (same time format, level, logger name, and the request,
session and instance ids in the same place) and honour the level of the `agentcell.access`
logger, so `AGENTCELL_LOG_LEVEL=warning` turns them off. A crash loses at most FLUSH_S of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from json.encoder import encode_basestring as json_string
from typing import Any, Generic, TextIO, TypeVar

from agentcell.server.observability.logs import LogFormat

LOGGER = "agentcell.access"
FLUSH_S = 0.05
FLUSH_LINES = 512


AccessFields = tuple[str, str, str, int, float, int, int, str | None, str | None, str | None]
"""What one access line says of its request: request id, method, path, status, duration in ms,
bytes in and out, function, session, instance."""


Entry = TypeVar("Entry")


def _as_given(fields: Any) -> AccessFields:
    return fields  # type: ignore[no-any-return]


class AccessLog(Generic[Entry]):
    """Owns the access lines of one server: formats, buffers and writes them to `stream`.

    `add(entry)` logs one request: `fields(entry)` says what its line says, called when the line
    is written (so an entry must not change meanwhile). By default the entries are the fields."""

    def __init__(
        self,
        stream: TextIO,
        fmt: LogFormat = "text",
        clock: Callable[[], float] = time.time,
        fields: Callable[[Entry], AccessFields] = _as_given,
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._fields = fields
        self._logger = logging.getLogger(LOGGER)
        self._entries: list[tuple[float, Entry]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._second_text = ""
        self._ms = -1
        self._ms_text = ""
        self._line = self._json_line if fmt == "json" else self._text_line

    def add(self, entry: Entry) -> None:
        """Log one request (the logger's level is checked once per batch)."""
        if self._timer is None:  # the first of a batch
            if not self._logger.isEnabledFor(logging.INFO):
                return
            self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
        entries = self._entries
        entries.append((self._clock(), entry))
        if len(entries) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._entries:
            return
        entries, self._entries = self._entries, []
        text = "".join(map(self._line, entries))
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr: the lines are lost, not the server
            pass

    def _text_line(self, timed: tuple[float, Entry]) -> str:
        now, entry = timed
        request_id, method, path, status, duration_ms, bytes_in, bytes_out, function, session, instance = (
            self._fields(entry)
        )
        return _TEXT_LINE % (
            self._text_time(now),
            request_id,
            session or "-",
            instance or "-",
            method,
            path,
            status,
            duration_ms,
            bytes_in,
            bytes_out,
            function or "-",
        )

    def _json_line(self, timed: tuple[float, Entry]) -> str:
        now, entry = timed
        request_id, method, path, status, duration_ms, bytes_in, bytes_out, function, session, instance = (
            self._fields(entry)
        )
        request = f'"{method} {path}" {status} {duration_ms:.1f}ms in={bytes_in} out={bytes_out}'
        return (
            f'{{"time": "{self._json_time(now)}", "level": "info", "logger": "{LOGGER}", '
            f'"message": {json_string(request)}, "request_id": {json_string(request_id)}, '
            f'"function": {_json_or_null(function)}, "session": {_json_or_null(session)}, '
            f'"instance": {_json_or_null(instance)}, "status": {status}, '
            f'"duration_ms": {duration_ms:.3f}, "bytes_in": {bytes_in}, "bytes_out": {bytes_out}}}\n'
        )

    def close(self) -> None:
        self.flush()

    def _text_time(self, now: float) -> str:
        """As logging.Formatter writes asctime: local time, milliseconds after a comma (made
        once per millisecond: under load, dozens of lines share one)."""
        ms = int(now * 1000)
        if ms != self._ms:
            second = ms // 1000
            if second != self._second:
                self._second = second
                self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._ms, self._ms_text = ms, f"{self._second_text},{ms - second * 1000:03d}"
        return self._ms_text

    def _json_time(self, now: float) -> str:
        """As the JSON formatter writes it: UTC, ISO 8601, milliseconds."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((now - second) * 1000):03d}+00:00"


_TEXT_LINE = f'%s INFO {LOGGER} [%s %s %s]: "%s %s" %d %.1fms in=%d out=%d fn=%s\n'
"""(one `%` for the whole line: a third cheaper than f-strings)"""


def _json_or_null(value: str | None) -> str:
    return "null" if value is None else json_string(value)
