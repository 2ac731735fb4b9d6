"""BuildLog: a build's events so far, bounded, for any number of followers (live or late).

Past a byte budget of output the oldest events go (a follower that joins late gets a marker saying
how much output it missed), so a noisy build cannot hold the server's memory.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import AsyncIterator

from agentcell.protocol.templates import BuildEndEvent, BuildLogEvent, BuildStepEvent

Event = BuildStepEvent | BuildLogEvent | BuildEndEvent
LOG_LIMIT_BYTES = 1 << 20


class BuildLog:
    def __init__(self, limit_bytes: int = LOG_LIMIT_BYTES) -> None:
        self._events: deque[Event] = deque()
        self._offset = 0
        """how many events were dropped from the front (indexes stay stable for followers)"""
        self._log_bytes = 0
        self._dropped_bytes = 0
        self._limit = limit_bytes
        self._changed = asyncio.Condition()

    @property
    def ended(self) -> bool:
        return bool(self._events) and isinstance(self._events[-1], BuildEndEvent)

    async def append(self, event: Event) -> None:
        if self.ended:
            return
        self._events.append(event)
        if isinstance(event, BuildLogEvent):
            self._log_bytes += len(event.data)
            self._trim()
        async with self._changed:
            self._changed.notify_all()

    def tail(self, max_chars: int) -> str:
        """The last output, for an error message."""
        text = "".join(e.data for e in self._events if isinstance(e, BuildLogEvent))
        return text[-max_chars:]

    async def follow(self) -> AsyncIterator[Event]:
        """Every event still kept, then live ones, until the end event."""
        index = self._offset
        while True:
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._has, index))
            index = max(index, self._offset)
            if self._dropped_bytes and index == self._offset:
                yield BuildLogEvent(
                    stream="stderr", data=f"[{self._dropped_bytes} bytes of earlier output dropped]\n"
                )
            while index < self._offset + len(self._events):
                event = self._events[index - self._offset]
                index += 1
                yield event
                if isinstance(event, BuildEndEvent):
                    return

    def _has(self, index: int) -> bool:
        return index < self._offset + len(self._events)

    def _trim(self) -> None:
        """Drop from the front, whatever kind: a late follower still gets every later event."""
        while self._log_bytes > self._limit and len(self._events) > 1:
            dropped = self._events.popleft()
            self._offset += 1
            if isinstance(dropped, BuildLogEvent):
                self._log_bytes -= len(dropped.data)
                self._dropped_bytes += len(dropped.data)
