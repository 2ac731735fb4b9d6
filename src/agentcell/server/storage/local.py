"""LocalObjectStore: objects as files under one directory (the embedded default store).

A key maps to the file `root/key`. Writes go to a temporary file in the same directory, are
fsynced and renamed over the target, then the directory is fsynced: a reader sees the old file or
the new one, and a crash leaves at most a stray temporary file (ignored by `list`; `delete_prefix`
removes those under its prefix that are older than the store object). Blocking file work runs in
threads.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

from agentcell.errors import AgentcellError, InvalidArgument, NotFound, Unavailable
from agentcell.server.storage.objects import ObjectInfo, validate_key, validate_prefix

TMP_MARK = ".agentcell-tmp-"
OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalObjectStore:
    """Owns the files under `root`; nothing else should write there."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root)
        if not path.is_absolute():
            raise InvalidArgument(f"local object store directory must be an absolute path, got {str(root)!r}")
        self.root = path
        self._opened_ns = time.time_ns()  # temporary files older than this are of a dead process

    def _path(self, key: str) -> Path:
        validate_key(key)
        if any(segment.startswith(TMP_MARK) for segment in key.split("/")):
            raise InvalidArgument(f"object key segments must not start with {TMP_MARK!r}, got {key!r}")
        return self.root / key

    async def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        await _in_thread(self._write_all, path, data)

    def _write_all(self, path: Path, data: bytes) -> None:
        fd, tmp = _open_temp(path)
        try:
            with os.fdopen(fd, "wb", closefd=True) as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            _publish(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        path = self._path(key)
        fd, tmp = await _in_thread(_open_temp, path)
        total = 0
        try:
            async for chunk in chunks:
                await _in_thread(_write_fully, fd, chunk)
                total += len(chunk)
            await _in_thread(os.fsync, fd)
            await _in_thread(_close_and_publish, fd, tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return total

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        return await _in_thread(_read_all, path, key)

    async def get_stream(self, key: str, chunk_bytes: int = 1 << 20) -> AsyncIterator[bytes]:
        path = self._path(key)
        fd = await _in_thread(_open_existing, path, key)
        try:
            while chunk := await _in_thread(os.read, fd, chunk_bytes):
                yield chunk
        finally:
            os.close(fd)

    async def exists(self, key: str) -> bool:
        path = self._path(key)
        return await asyncio.to_thread(_is_object, path)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        validate_prefix(prefix)
        return await _in_thread(self._list, prefix)

    def _list(self, prefix: str) -> builtins.list[ObjectInfo]:
        found = [
            ObjectInfo(key, entry.stat(follow_symlinks=False).st_size)
            for key, entry in self._files(prefix)
            if not entry.name.startswith(TMP_MARK)
        ]
        return sorted(found, key=lambda info: info.key)

    def _files(self, prefix: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """(thread) Every regular file whose key starts with `prefix`, temporary ones included."""
        stack = [self.root / prefix.rpartition("/")[0]]
        while stack:
            directory = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                key = os.path.relpath(entry.path, self.root)
                if entry.is_dir(follow_symlinks=False):
                    if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                        stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                    yield key, entry

    def _remove_strays(self, prefix: str) -> None:
        """(thread) Temporary files under `prefix` last written before this store object was made:
        left by a process killed mid-write (a write of this one is newer)."""
        for _, entry in list(self._files(prefix)):
            if entry.name.startswith(TMP_MARK):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_mtime_ns < self._opened_ns:
                        self._unlink_and_prune(Path(entry.path))

    async def delete(self, key: str) -> None:
        path = self._path(key)
        await _in_thread(self._unlink_and_prune, path)

    def _unlink_and_prune(self, path: Path) -> None:
        try:
            path.unlink()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                return
            parent = parent.parent

    async def delete_prefix(self, prefix: str) -> int:
        infos = await self.list(prefix)
        for info in infos:
            await self.delete(info.key)
        await _in_thread(self._remove_strays, prefix)
        return len(infos)

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"LocalObjectStore({str(self.root)!r})"


P = ParamSpec("P")
T = TypeVar("T")


async def _in_thread(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return await asyncio.to_thread(func, *args, **kwargs)
    except AgentcellError:
        raise
    except OSError as exc:
        raise Unavailable(f"local object store I/O failed: {exc.strerror or exc}") from exc


def _open_temp(path: Path) -> tuple[int, Path]:
    """A new temporary file beside `path`, retrying if a concurrent delete pruned the directory:
    after our mkdir (the open finds no directory), or inside it (`mkdir(exist_ok=True)` raises
    FileExistsError when the directory it found existing is gone by the time it checks)."""
    for attempt in range(5):
        tmp = path.parent / f"{TMP_MARK}{secrets.token_hex(8)}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except (FileNotFoundError, FileExistsError):
            if attempt == 4:
                raise
            continue
        return fd, tmp
    raise AssertionError("unreachable")


def _write_fully(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _close_and_publish(fd: int, tmp: Path, path: Path) -> None:
    os.close(fd)
    _publish(tmp, path)


def _publish(tmp: Path, path: Path) -> None:
    os.chmod(tmp, 0o644)
    os.rename(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _open_existing(path: Path, key: str) -> int:
    try:
        fd = os.open(path, OPEN_READ)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):  # ELOOP: a link, never an object
            raise NotFound(f"object {key!r} does not exist") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotFound(f"object {key!r} does not exist")
    return fd


def _is_object(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _read_all(path: Path, key: str) -> bytes:
    fd = _open_existing(path, key)
    with os.fdopen(fd, "rb", closefd=True) as file:
        return file.read()
