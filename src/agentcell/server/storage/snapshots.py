"""Snapshots: versioned, incremental, atomic copies of a workspace directory in an ObjectStore.

Layout under a prefix (e.g. `tenant/function/session`)::

    {prefix}/snapshots/{seq:012d}   the manifest (JSON + zlib, then an inline area holding up to
                                    64 KiB of recently changed small files), written last: its
                                    presence *is* the snapshot
    {prefix}/packs/{seq:012d}-{n:04d}  small files first stored by snapshot `seq`, concatenated
    {prefix}/blobs/{sha256}[.z]     one chunk of a large file, content-addressed

Persist uploads packs and blobs, then the manifest, then deletes manifests beyond the last `keep`
and every pack or blob no kept manifest references. A crash at any point leaves the previous
manifest and everything it references intact; leftovers of the crashed persist are collected by
the next one, or by `sweep` when none will come (the caller knows: scheduler/workspaces.py marks
the prefixes it writes). Persists, restores and sweeps of one prefix are serialized inside this
object (one server process owns a prefix at a time). At most `max_jobs` persists, restores,
listings and sweeps of all prefixes run at once: each holds manifests in memory, up to ~2.5 KB an
entry (a snapshot keeps up to a million: a few GB), so sessions ending together, or a tenant
filling workspaces with tiny files, cannot take the server's memory; while any runs, the cyclic
GC's full collections wait (full_gc.py).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import logging
import os
import stat
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from agentcell.errors import AgentcellError, Internal, InvalidArgument, NotFound, QuotaExceeded
from agentcell.server.clock import Clock
from agentcell.server.storage.full_gc import FullGcHold
from agentcell.server.storage.manifest import Manifest, SnapshotCorrupt, decode, encode, validate
from agentcell.server.storage.objects import ObjectStore, validate_key
from agentcell.server.storage.persist import Persist
from agentcell.server.storage.pieces import SMALL_FILE_BYTES
from agentcell.server.storage.restore import Restore, needed_bytes
from agentcell.server.storage.threads import settled
from agentcell.server.storage.tree import Excludes, open_root

__all__ = ["SnapshotCorrupt", "SnapshotInfo", "Snapshots", "Swept"]

log = logging.getLogger(__name__)

MANIFESTS = "snapshots/"
COLLECTED = ("packs/", "blobs/")
MiB = 1 << 20
TICK_WAIT_S = 0.001
TICK_TRIES = 1000


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    seq: int
    created_at: float
    files: int
    logical_bytes: int  # sum of file sizes
    uploaded_bytes: int  # bytes this snapshot's persist uploaded (manifest included)
    stored_bytes: int  # bytes of every object this snapshot needs (shared ones included)
    hashed_files: int = 0  # files read and hashed by its persist (the rest were unchanged)
    skipped: int = 0  # fifos, sockets, devices, other mounts and vanished entries left out


@dataclass(frozen=True, slots=True)
class Swept:
    """What `Snapshots.sweep` found and deleted under a prefix."""

    newest: SnapshotInfo | None
    """the newest readable snapshot left (None: there is none)"""
    deleted_objects: int
    deleted_bytes: int


MAX_JOBS = 4
"""persists and restores at once on a node (see the module docstring): at a million entries each
they hold ~10 GB together, the worst case; the usual workspace's few thousand cost a few MB"""


class Snapshots:
    """Owns the snapshot objects of every prefix it is given; called by the scheduler on pre-stop,
    on demand and periodically (persist), and before a resumed session's first request (restore)."""

    def __init__(
        self,
        store: ObjectStore,
        clock: Clock,
        *,
        keep: int = 3,
        compress: bool = True,
        small_file_bytes: int = SMALL_FILE_BYTES,
        max_jobs: int = MAX_JOBS,
    ) -> None:
        """`compress`: zlib level 1 where a probe shows it pays; `small_file_bytes`: files up to this
        size share pack objects (0: every file is its own content-addressed blob); `max_jobs`:
        persists and restores running at once (the others wait their turn)."""
        if max_jobs < 1:
            raise InvalidArgument(f"max_jobs must be at least 1, got {max_jobs}")
        if keep < 1:
            raise InvalidArgument(f"keep must be at least 1, got {keep}")
        if not 0 <= small_file_bytes <= SMALL_FILE_BYTES:
            raise InvalidArgument(f"small_file_bytes must be between 0 and {SMALL_FILE_BYTES}")
        self._store, self._clock, self._keep, self._compress = store, clock, keep, compress
        self._small = small_file_bytes
        self._jobs = asyncio.Semaphore(max_jobs)
        self._full_gc = FullGcHold(clock)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._restored: dict[str, tuple[int, int]] = {}
        """prefix → (seq, ns): snapshot `seq` was restored in this process, and files whose change
        time is below `ns` are as it holds them (until the prefix's next snapshot)"""

    def _lock(self, prefix: str) -> asyncio.Lock:
        lock = self._locks.get(prefix)
        if lock is None:
            lock = self._locks[prefix] = asyncio.Lock()
        return lock

    async def persist(
        self,
        prefix: str,
        dir_fd: int,
        exclude: Sequence[str] = (),
        *,
        owner: tuple[int, int] | None = None,
        keep: int | None = None,
    ) -> SnapshotInfo:
        """Snapshot the directory `dir_fd` as the next version under `prefix`, keeping the last
        `keep` snapshots (default: the constructor's).

        `owner` is accepted for symmetry with `restore`: persisting reads as root and records no
        ownership; restore gives every entry the owner it is told.
        """
        validate_key(prefix)
        excludes = Excludes(exclude)
        keep = self._keep if keep is None else keep
        if keep < 1:
            raise InvalidArgument(f"keep must be at least 1, got {keep}")
        async with self._lock(prefix), self._job():
            seqs = await self._seqs(prefix)
            newest = await self._newest_readable(prefix, seqs)
            previous = newest[0] if newest is not None else None
            seq = max(seqs, default=0) + 1
            restored = self._restored.get(prefix, (0, 0))
            job = Persist(
                self._store,
                prefix,
                seq,
                previous,
                compress=self._compress,
                small_file_bytes=self._small,
                restored_before=restored[1] if previous is not None and previous.seq == restored[0] else 0,
            )
            try:
                manifest = await job.run(dir_fd, excludes, self._clock.now())
            except OSError as exc:
                raise _os_failure(exc, f"persist of {prefix!r}") from exc
            if await settled(_unchanged, manifest, previous, seqs):
                # Nothing changed: a copy of the newest snapshot would only push an older,
                # different one out of the `keep` window (periodic syncs of an idle session).
                assert newest is not None
                return await settled(_info, *newest, uploaded=0)
            data = await settled(_stored_form, manifest, prefix)
            await self._store.put(_manifest_key(prefix, seq), data)
            self._restored.pop(prefix, None)  # the new snapshot records the files' change times
            await self._collect(prefix, [*seqs, seq], keep, manifest)
            return await settled(_info, manifest, len(data), uploaded=manifest.uploaded_bytes + len(data))

    async def restore(
        self,
        prefix: str,
        dir_fd: int,
        *,
        owner: tuple[int, int] | None = None,
        seq: int | None = None,
    ) -> SnapshotInfo | None:
        """Replace the contents of `dir_fd` with snapshot `seq` (default: the latest).

        None when `prefix` has no snapshot at all; SnapshotCorrupt (target left empty) when the
        manifest or an object is missing or bad; NotFound when an explicit `seq` does not exist.
        """
        validate_key(prefix)
        async with self._lock(prefix), self._job():
            seqs = await self._seqs(prefix)
            if seq is not None and seq not in seqs:
                raise NotFound(f"snapshot {seq} of {prefix!r} does not exist (have {sorted(seqs)})")
            if not seqs:
                return None
            manifest, size = await self._load(prefix, seq if seq is not None else max(seqs))
            self._restored.pop(prefix, None)
            try:
                await Restore(self._store, prefix, manifest, owner).run(dir_fd)
            except OSError as exc:
                what = f"restore of snapshot {manifest.seq} of {prefix!r}"
                raise _os_failure(exc, what, _shortfall(dir_fd, manifest)) from exc
            self._restored[prefix] = (manifest.seq, await settled(_change_time_after, dir_fd))
            return await settled(_info, manifest, size)

    async def latest(self, prefix: str) -> SnapshotInfo | None:
        validate_key(prefix)
        seqs = await self._seqs(prefix)
        if not seqs:
            return None
        async with self._job():
            return await settled(_info, *await self._load(prefix, max(seqs)))

    async def list(self, prefix: str) -> list[SnapshotInfo]:
        """Every kept snapshot of `prefix`, oldest first."""
        validate_key(prefix)
        infos = []
        async with self._job():
            for seq in sorted(await self._seqs(prefix)):
                infos.append(await settled(_info, *await self._load(prefix, seq)))
        return infos

    async def stored_bytes(self, prefix: str) -> int:
        """Bytes stored under `prefix` (all kept snapshots, shared objects counted once)."""
        validate_key(prefix)
        return sum(info.size for info in await self._store.list(f"{prefix}/"))

    async def delete_all(self, prefix: str) -> None:
        validate_key(prefix)
        async with self._lock(prefix):
            self._restored.pop(prefix, None)
            await self._store.delete_prefix(f"{prefix}/")

    async def sweep(self, prefix: str) -> Swept:
        """Delete what persists that never finished left under `prefix`, keeping every snapshot:
        the collection a persist ends with (packs and blobs that no snapshot references; nothing
        when a snapshot cannot be read), or, when `prefix` holds no snapshot at all, every object
        under it. Called for a prefix that a persist was writing when its server was killed and
        that no later persist will collect; it deletes nothing a persist of this object would not.
        """
        validate_key(prefix)
        async with self._lock(prefix), self._job():
            seqs = await self._seqs(prefix)
            if not seqs:
                infos = await self._store.list(f"{prefix}/")
                await self._store.delete_prefix(f"{prefix}/")
                return Swept(None, len(infos), sum(info.size for info in infos))
            newest = await self._newest_readable(prefix, seqs)
            if newest is None:
                return Swept(None, 0, 0)  # nothing readable to tell leftovers from: keep it all
            objects, freed = await self._collect(prefix, seqs, len(seqs), newest[0])
            return Swept(await settled(_info, *newest), objects, freed)

    # ---- internals --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _job(self) -> AsyncIterator[None]:
        """One of the node's `max_jobs` slots (for work over a whole manifest), with the cyclic
        GC's full collections held off meanwhile (full_gc.py)."""
        async with self._jobs:
            with self._full_gc.held():
                yield

    async def _seqs(self, prefix: str) -> builtins.list[int]:
        names = [info.key.rsplit("/", 1)[1] for info in await self._store.list(f"{prefix}/{MANIFESTS}")]
        return [int(name) for name in names if len(name) == 12 and name.isdigit()]

    async def _load(self, prefix: str, seq: int) -> tuple[Manifest, int]:
        key = _manifest_key(prefix, seq)
        try:
            data = await self._store.get(key)
        except NotFound as exc:
            raise SnapshotCorrupt(f"snapshot manifest {key!r} is missing") from exc
        manifest = await settled(decode, data, key)
        if manifest.seq != seq:
            raise SnapshotCorrupt(f"snapshot manifest {key!r} claims to be snapshot {manifest.seq}")
        return manifest, len(data)

    async def _newest_readable(self, prefix: str, seqs: builtins.list[int]) -> tuple[Manifest, int] | None:
        """The base for an incremental persist, and its size; a bad newest snapshot only costs a
        full upload."""
        for seq in sorted(seqs, reverse=True):
            try:
                return await self._load(prefix, seq)
            except SnapshotCorrupt as exc:
                log.warning("persist of %s starts from scratch: %s", prefix, exc.message)
        return None

    async def _collect(
        self, prefix: str, seqs: builtins.list[int], keep: int, loaded: Manifest
    ) -> tuple[int, int]:
        """Drop manifests beyond `keep`, then objects that no kept manifest references (`loaded`,
        one of them, is already read). Returns how many objects went, and their bytes."""
        ordered = sorted(seqs)
        kept, dropped = ordered[-keep:], ordered[:-keep]
        for seq in dropped:
            await self._store.delete(_manifest_key(prefix, seq))
        referenced = set(loaded.objects)
        for seq in kept:
            if seq == loaded.seq:
                continue
            try:
                referenced |= set((await self._load(prefix, seq))[0].objects)
            except SnapshotCorrupt:
                return 0, 0  # cannot tell what it needs: keep every object until it ages out
        deleted = [
            info
            for area in COLLECTED
            for info in await self._store.list(f"{prefix}/{area}")
            if info.key[len(prefix) + 1 :] not in referenced
        ]
        for info in deleted:
            await self._store.delete(info.key)
        return len(deleted), sum(info.size for info in deleted)


def _os_failure(exc: OSError, what: str, shortfall: str = "") -> AgentcellError:
    """A file-system failure on the workspace side, as a domain error (the store's are already)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return QuotaExceeded(f"{what}: the workspace ran out of space ({exc.strerror}){shortfall}")
    return Internal(f"{what} failed on the workspace: {exc.strerror or exc}")


def _change_time_after(dir_fd: int) -> int:
    """(thread) A change time of the file system of `dir_fd` later than every change made in it so
    far, in a tick of its clock of its own: any later change gets this or a later one, while what
    came before is below it. Found by changing the directory's ctime (a chmod to its own mode)
    until its clock moves on (a tick: a few ms). 0 (nothing trusted) if it never does."""
    fd = open_root(dir_fd)
    try:
        first = _touch(fd)
        for _ in range(TICK_TRIES):
            if (now := _touch(fd)) > first:
                return now
            time.sleep(TICK_WAIT_S)
        return 0
    finally:
        os.close(fd)


def _touch(fd: int) -> int:
    """(thread) Set the directory's change time to now (its mode to what it is); returns it."""
    os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode))
    return os.fstat(fd).st_ctime_ns


def _stored_form(manifest: Manifest, prefix: str) -> bytes:
    """(thread) The manifest's stored form, once it is known that a restore accepts it (the walk
    leaves out what it could not hold): a snapshot that cannot be read back would lose every file
    of the workspace, not just one."""
    try:
        validate(manifest)
    except SnapshotCorrupt as exc:
        raise Internal(f"persist of {prefix!r} made a snapshot it could not restore: {exc.message}") from exc
    return encode(manifest)


def _shortfall(dir_fd: int, manifest: Manifest) -> str:
    """For a restore that ran out of space: what the snapshot needs, and what the workspace holds."""
    try:
        fs = os.fstatvfs(dir_fd)
    except OSError:
        return ""
    needed, total = needed_bytes(manifest) / MiB, fs.f_blocks * fs.f_frsize / MiB
    return f": the snapshot's files need about {needed:.1f} MiB; its file system holds {total:.1f} MiB"


def _unchanged(manifest: Manifest, previous: Manifest | None, seqs: builtins.list[int]) -> bool:
    """The walk found exactly what the newest snapshot (which is readable) holds."""
    return (
        previous is not None
        and previous.seq == max(seqs)
        and manifest.uploaded_bytes == 0
        and manifest.entries == previous.entries
        and manifest.links == previous.links
    )


def _manifest_key(prefix: str, seq: int) -> str:
    return f"{prefix}/{MANIFESTS}{seq:012d}"


def _info(manifest: Manifest, manifest_bytes: int, *, uploaded: int | None = None) -> SnapshotInfo:
    return SnapshotInfo(
        seq=manifest.seq,
        created_at=manifest.created_at,
        files=manifest.files,
        logical_bytes=manifest.logical_bytes,
        uploaded_bytes=manifest.uploaded_bytes + manifest_bytes if uploaded is None else uploaded,
        stored_bytes=sum(manifest.objects.values()) + manifest_bytes,
        hashed_files=manifest.hashed_files,
        skipped=manifest.skipped,
    )
