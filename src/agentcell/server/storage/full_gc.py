"""FullGcHold: the cyclic garbage collector's full collections held off while storage jobs run.

A persist or restore allocates an object or more for every entry of its workspace, and they live
for the whole job: enough new survivors to trigger full collections again and again, each of which
walks every tracked object of the process while holding the GIL (0.3 s at 100k entries here,
seconds at a million): the event loop, and every request on it, stops meanwhile. Those objects hold
no cycles (reference counting frees them when the job ends), so collecting them is wasted work.

While any job runs, the oldest generation's threshold is raised out of reach; the young ones are
collected as usual, so most cyclic garbage still goes. What reaches the oldest generation waits,
at most HELD_MAX_S: a job that starts after that long runs one full collection first.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

from agentcell.server.clock import Clock

OUT_OF_REACH = 1 << 30
HELD_MAX_S = 300.0


class FullGcHold:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._jobs = 0
        self._since = 0.0
        self._threshold = gc.get_threshold()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Around one job (jobs may overlap: the hold ends with the last)."""
        now = self._clock.now()
        if self._jobs == 0:
            self._threshold = gc.get_threshold()
            young, middle, _ = self._threshold
            gc.set_threshold(young, middle, OUT_OF_REACH)
            self._since = now
        elif now - self._since > HELD_MAX_S:  # jobs back to back for long: let one through
            gc.collect()
            self._since = now
        self._jobs += 1
        try:
            yield
        finally:
            self._jobs -= 1
            if self._jobs == 0:
                gc.set_threshold(*self._threshold)
