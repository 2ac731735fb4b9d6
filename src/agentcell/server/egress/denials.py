"""DenialLog: the log lines of egress denials, a few per sandbox at a time.

Every denial is answered (403) and each one is worth a line for whoever runs the node, but a
sandbox that asks for denied places in a loop would otherwise write as many lines as it likes
into the server's log (thousands a second, for as long as it runs). So each sandbox gets at most
DENIALS_LOGGED lines per DENIALS_WINDOW_S; the rest are counted, and the next line logged for
that sandbox says how many were left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agentcell.server.clock import Clock

log = logging.getLogger(__name__)

DENIALS_LOGGED = 20
DENIALS_WINDOW_S = 10.0


@dataclass(slots=True)
class _Window:
    started: float
    logged: int = 0
    left_out: int = 0


class DenialLog:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def record(self, sandbox_id: str, policy_kind: str, what: str) -> None:
        now = self._clock.now()
        window = self._windows.get(sandbox_id)
        if window is None or now - window.started >= DENIALS_WINDOW_S:
            left_out = window.left_out if window is not None else 0
            window = self._windows[sandbox_id] = _Window(now, left_out=left_out)
        if window.logged >= DENIALS_LOGGED:
            window.left_out += 1
            return
        window.logged += 1
        more = f" ({window.left_out} more denials not logged before this one)" if window.left_out else ""
        window.left_out = 0
        log.warning("sandbox %s: egress to %s denied by policy %s%s", sandbox_id, what, policy_kind, more)

    def forget(self, sandbox_id: str) -> None:
        self._windows.pop(sandbox_id, None)
