"""Resolver: the egress proxy's name lookups, kept apart from the rest of the server and from
each other sandbox's.

A lookup is a blocking C library call that holds its thread until the name servers answer or the
resolver's timeouts and attempts run out (10 s and more for a name whose server never answers,
which a sandbox can ask for on purpose). On the event loop's shared thread pool (uvloop's has 4
threads, used by every lookup in the server), a few such names would stall every sandbox's egress
and the server's own connections. So lookups run on threads of their own (daemon threads: one
that hangs never delays the server's exit), and one sandbox has at most `per_sandbox` of them
running at once, counted until the thread is free again (not until the caller gave up waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from agentcell.server.egress.policy import IPAddress, reached

LOOKUP_THREADS = 64
LOOKUPS_PER_SANDBOX = 2


@dataclass(slots=True)
class _Job:
    host: str
    port: int
    done: Callable[[list[IPAddress] | OSError], None]


@dataclass(slots=True)
class _Threads:
    """Daemon threads that run lookups from a queue, started as they are needed up to `limit`."""

    limit: int
    jobs: queue.SimpleQueue[_Job] = field(default_factory=queue.SimpleQueue)
    started: int = 0
    idle: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def submit(self, job: _Job) -> None:
        with self.lock:
            if self.idle == 0 and self.started < self.limit:
                self.started += 1
                threading.Thread(target=self._work, name="acell-egress-dns", daemon=True).start()
        self.jobs.put(job)

    def _work(self) -> None:
        while True:
            with self.lock:
                self.idle += 1
            job = self.jobs.get()
            with self.lock:
                self.idle -= 1
            job.done(_lookup(job.host, job.port))


def _lookup(host: str, port: int) -> list[IPAddress] | OSError:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        return e
    except (UnicodeError, ValueError) as e:  # a name the IDNA codec or the C library refuses
        return OSError(f"not a name: {e}")
    found = [reached(ipaddress.ip_address(str(info[4][0]).partition("%")[0])) for info in infos]
    return list(dict.fromkeys(found))


class Resolver:
    def __init__(self, *, threads: int = LOOKUP_THREADS, per_sandbox: int = LOOKUPS_PER_SANDBOX) -> None:
        self._threads = _Threads(threads)
        self._per_sandbox = per_sandbox
        self._slots: dict[str, asyncio.Semaphore] = {}

    async def resolve(self, sandbox_id: str, host: str, port: int) -> list[IPAddress]:
        """The addresses of `host`, in the resolver's order. Raises OSError. The caller bounds
        the wait (asyncio.wait_for); the lookup's thread and slot stay taken until it ends."""
        loop = asyncio.get_running_loop()
        slots = self._slots.setdefault(sandbox_id, asyncio.Semaphore(self._per_sandbox))
        await slots.acquire()
        result: asyncio.Future[list[IPAddress] | OSError] = loop.create_future()

        def finished(found: list[IPAddress] | OSError) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, result, found, slots)

        self._threads.submit(_Job(host, port, finished))
        found = await asyncio.shield(result)
        if isinstance(found, OSError):
            raise found
        return found

    def forget(self, sandbox_id: str) -> None:
        """Drop the sandbox's slots (its lookups still running finish on their own)."""
        self._slots.pop(sandbox_id, None)


def _settle(
    result: asyncio.Future[list[IPAddress] | OSError],
    found: list[IPAddress] | OSError,
    slots: asyncio.Semaphore,
) -> None:
    slots.release()
    if not result.done():
        result.set_result(found)
