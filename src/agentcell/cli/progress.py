"""A byte counter on stderr for slow transfers: shown only on a terminal, and only after a moment."""

from __future__ import annotations

import sys
import time
from typing import TextIO

SPINNER = "|/-\\"
UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(count: float) -> str:
    for unit in UNITS:
        if count < 1024 or unit == UNITS[-1]:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class Progress:
    """Counts bytes (`add`, safe to call from the SDK's loop thread) and redraws one stderr line at
    most every `interval_s`, starting after `delay_s`; `finish` wipes the line."""

    def __init__(
        self,
        label: str,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        delay_s: float = 0.5,
        interval_s: float = 0.1,
    ) -> None:
        self.label = label
        self.total_bytes = 0
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._started = time.monotonic()
        self._delay_s = delay_s
        self._interval_s = interval_s
        self._drawn_at: float | None = None
        self._frame = 0

    def add(self, count: int) -> None:
        self.total_bytes += count
        now = time.monotonic()
        if not self._enabled or now - self._started < self._delay_s:
            return
        if self._drawn_at is not None and now - self._drawn_at < self._interval_s:
            return
        self._drawn_at = now
        self._frame += 1
        rate = self.total_bytes / max(now - self._started, 1e-6)
        spin = SPINNER[self._frame % len(SPINNER)]
        self._draw(f"{spin} {self.label}  {human_bytes(self.total_bytes)}  ({human_bytes(rate)}/s)")

    def finish(self) -> None:
        if self._drawn_at is not None:
            self._draw("")

    def _draw(self, line: str) -> None:
        self._stream.write(f"\r{line}\x1b[K")
        self._stream.flush()
