"""Fetcher: the package mirrors' way out to the host's configured indexes (urllib on a few
dedicated threads: it follows redirects, speaks https with the system's CA store and honours the
host's own proxy settings; downloads are large and few, so a thread each is cheap)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

MAX_PAGE_BYTES = 64 << 20
CHUNK_BYTES = 1 << 20
USER_AGENT = "agentcell-package-mirror"
T = TypeVar("T")


class FetchError(Exception):
    """The upstream index could not give us what we asked for; the message says why."""


@dataclass(frozen=True, slots=True)
class Page:
    url: str
    """after redirects: relative links resolve against this"""
    body: bytes
    content_type: str


class Fetcher:
    """Pages and downloads run on threads of their own: a page (small, and what every `pip
    install` asks first) never waits behind other sandboxes' large downloads."""

    def __init__(self, *, timeout_s: float = 60.0, threads: int = 4, download_threads: int = 8) -> None:
        self._timeout_s = timeout_s
        self._threads = {"page": threads, "download": download_threads}
        self._executors: dict[str, ThreadPoolExecutor] = {}

    async def page(self, url: str, accept: str) -> Page:
        return await self._run("page", functools.partial(self._page, url, accept))

    async def download(self, url: str, dest: Path, algorithm: str, max_bytes: int = 1 << 62) -> str:
        """Stream url into dest (created, mode 0644); return the hex digest of what arrived.
        FetchError if more than `max_bytes` arrive."""
        return await self._run("download", functools.partial(self._download, url, dest, algorithm, max_bytes))

    async def off_loop(self, call: Callable[[], T]) -> T:
        """Run CPU work on a page thread (rewriting what `page` fetched), not on the event loop."""
        return await self._run("page", call)

    def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()

    async def _run(self, kind: str, call: Callable[[], T]) -> T:
        executor = self._executors.get(kind)
        if executor is None:
            executor = ThreadPoolExecutor(self._threads[kind], thread_name_prefix=f"acell-mirror-{kind}")
            self._executors[kind] = executor
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    def _open(self, url: str, accept: str) -> Any:
        request = urllib.request.Request(url, headers={"Accept": accept, "User-Agent": USER_AGENT})
        try:
            return urllib.request.urlopen(request, timeout=self._timeout_s)
        except urllib.error.HTTPError as e:
            raise FetchError(f"{url} answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise FetchError(f"cannot fetch {url}: {reason}") from None

    def _page(self, url: str, accept: str) -> Page:
        with self._open(url, accept) as reply:
            body = reply.read(MAX_PAGE_BYTES + 1)
            if len(body) > MAX_PAGE_BYTES:
                raise FetchError(f"{url} is larger than {MAX_PAGE_BYTES} bytes")
            return Page(reply.geturl(), body, reply.headers.get("Content-Type", ""))

    def _download(self, url: str, dest: Path, algorithm: str, max_bytes: int) -> str:
        digest = hashlib.new(algorithm)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        received = 0
        with os.fdopen(fd, "wb") as out, self._open(url, "*/*") as reply:
            try:
                while chunk := reply.read(CHUNK_BYTES):
                    received += len(chunk)
                    if received > max_bytes:
                        raise FetchError(f"{url} is larger than the package cache ({max_bytes} bytes)")
                    digest.update(chunk)
                    out.write(chunk)
            except OSError as e:
                raise FetchError(f"download of {url} broke off: {e}") from None
        return digest.hexdigest()
