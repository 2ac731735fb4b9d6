"""`EventLoopThread`: one private event loop on one thread, for the sync SDK to drive the async core.

Each sync `Sandbox` owns one (started in `Sandbox.create/connect`, stopped by `close()` or on
leaving `with`). Calls block the calling thread until the coroutine is done; Ctrl-C in the caller
cancels the coroutine. Output callbacks run on the loop's thread while the caller waits.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class _End(enum.Enum):
    TOKEN = 0


class EventLoopThread:
    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="agentcell-sdk-loop", daemon=True)
        self._closed = False
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            # worker threads of asyncio.to_thread (file reads, code packing) end before close returns
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and return its result (or raise its exception) in this thread."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "a sync agentcell call from inside an SDK callback would deadlock; "
                "do it after the call that runs the callback returns, or use the async SDK"
            )
        if self._closed:
            coro.close()
            raise RuntimeError("this sandbox object is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting: stop the work too
            raise

    def iterate(self, items: AsyncIterator[T]) -> Iterator[T]:
        """A sync generator over an async iterator, each step run on the loop; closing the
        generator (or leaving it with an exception) closes the async one."""
        try:
            while (item := self.run(_next(items))) is not _End.TOKEN:
                yield item
        finally:
            aclose = getattr(items, "aclose", None)
            if aclose is not None and not self._closed:
                self.run(aclose())

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the loop and its thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join()


async def _next(items: AsyncIterator[T]) -> T | _End:
    return await anext(items, _End.TOKEN)
