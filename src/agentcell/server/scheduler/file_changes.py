"""FileChanges: the changes made to a running sandbox's files through its API (a write's start and
its commit, a directory made, a remove, a rename), kept out of a snapshot being taken.

A snapshot freezes the sandbox's own processes, but the API changes files from the host. The save
walks `/home/user` first and reads the files after, so a change landing in between could leave
the snapshot at no point in time: a file renamed meanwhile is in it under neither name, a file
written after another that was answered first is in it without that one. So a snapshot holds the
gate while it saves: the changes in flight finish first (each is a few system calls), new ones
wait until the save is done and then go ahead. A write's body is not held: it streams into a
temporary file (never part of a snapshot) meanwhile, and only its commit, the rename over its
target, waits. The gate does not refuse anything: a change made while a snapshot is taken is in
the sandbox, after the snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class FileChanges:
    """One sandbox's gate. One holder at a time (a snapshot of a sandbox runs under its lock);
    changes go through at once when none holds it."""

    def __init__(self) -> None:
        self._changing = 0
        self._settled = asyncio.Event()  # no change is in flight
        self._settled.set()
        self._open = asyncio.Event()  # no snapshot holds the gate
        self._open.set()

    async def enter(self) -> None:
        """Begin a change: waits while a snapshot holds the gate. Pair with `leave`."""
        while not self._open.is_set():
            await self._open.wait()
        self._changing += 1
        self._settled.clear()

    def leave(self) -> None:
        """The change is done (or failed): a snapshot waiting for it may begin."""
        self._changing -= 1
        if not self._changing:
            self._settled.set()

    @contextlib.asynccontextmanager
    async def change(self) -> AsyncIterator[None]:
        await self.enter()
        try:
            yield
        finally:
            self.leave()

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """While a snapshot saves: new changes wait from now on (so that a steady stream of them
        cannot put the snapshot off), and the body runs once those in flight are done."""
        self._open.clear()
        try:
            await self._settled.wait()
            yield
        finally:
            self._open.set()


class WriteChange:
    """One write's two turns at the gate, its start (the temp file, the directories it needs) and
    its commit, with the body streamed between them outside it. `leave` does nothing when the
    write is not in (the body failed, or waiting for the commit's turn was cancelled)."""

    def __init__(self, gate: FileChanges) -> None:
        self._gate = gate
        self._in = False

    async def enter(self) -> None:
        await self._gate.enter()
        self._in = True

    def leave(self) -> None:
        if self._in:
            self._in = False
            self._gate.leave()
