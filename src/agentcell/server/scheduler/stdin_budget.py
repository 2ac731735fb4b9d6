"""StdinBudget: the bytes of stdin the server holds for one sandbox's processes, capped.

Input written to a process that does not read it yet waits in the server (in its pipe's write
buffer) until the process takes it. Without a cap per sandbox, a sandbox with hundreds of
processes that never read could make the server hold gigabytes. Every write (and a command's
initial stdin) takes its size from the budget before it is handed to the process and gives it
back once the process has taken it or can no longer take it (exited, killed).
"""

from __future__ import annotations

import asyncio

from agentcell.errors import QuotaExceeded

MiB = 1 << 20


class StdinBudget:
    """At most `limit_bytes` queued at once; one write larger than the whole budget still goes
    when nothing else is queued (so that any write the API accepts can make progress)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.queued_bytes = 0
        self._freed = asyncio.Event()

    def has_room(self, size: int) -> bool:
        return self.queued_bytes == 0 or self.queued_bytes + size <= self.limit_bytes

    def take_now(self, size: int) -> None:
        """Take `size` bytes, or raise QuotaExceeded at once (a command's initial stdin)."""
        if not self.has_room(size):
            raise self._full(size)
        self.queued_bytes += size

    async def take(self, size: int, wait_s: float) -> None:
        """Take `size` bytes, waiting up to `wait_s` for other input to be read (backpressure);
        QuotaExceeded if it still does not fit."""
        try:
            async with asyncio.timeout(wait_s):
                while not self.has_room(size):
                    await self._freed.wait()
        except TimeoutError:
            raise self._full(size) from None
        self.queued_bytes += size

    def give(self, size: int) -> None:
        """`size` bytes taken before have been read by their process, or dropped with it."""
        if size <= 0:
            return
        self.queued_bytes = max(0, self.queued_bytes - size)
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()

    def _full(self, size: int) -> QuotaExceeded:
        return QuotaExceeded(
            f"this sandbox's processes have {_mib(self.queued_bytes)} of stdin written to them that "
            f"they have not read yet; the most the server holds for one sandbox is "
            f"{_mib(self.limit_bytes)}, so {_mib(size)} more does not fit: retry once they have "
            "read some (or kill the ones that never read), or write less at once",
            retry_after_s=1,
        )


def _mib(size: int) -> str:
    return f"{size / MiB:.4g} MiB"
