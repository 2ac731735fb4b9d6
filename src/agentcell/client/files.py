"""Files in a sandbox (async core). Bytes always stream; nothing is held whole in memory except
what `read` returns. Paths are absolute or relative to /home/user; `..` is refused."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import os
import posixpath
import tempfile
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from agentcell.client.api import ApiClient, Params, parse_model, request_body, segment
from agentcell.client.errors import NotFoundError
from agentcell.client.file_watch import AsyncFileWatch
from agentcell.client.transfer import (
    LocalPath,
    ProgressCallback,
    WriteData,
    extract_tree,
    is_multipart_safe,
    iter_local_file,
    iter_write_data,
    multipart_body,
    new_boundary,
    plan_upload,
    require_utf8,
)

# The wire models of files are imported by the methods that use them: every sandbox has an
# AsyncFiles, and a script that only runs commands would build these pydantic models for nothing.
if TYPE_CHECKING:
    from agentcell.protocol.files import FileEntry

FILES_PER_UPLOAD = 500


class AsyncFiles:
    """`sandbox.files`: the file system of one sandbox."""

    def __init__(self, api: ApiClient, sandbox_id: str) -> None:
        self._api = api
        self._base = f"/v1/sandboxes/{segment(sandbox_id)}/files"

    async def read(self, path: str) -> bytes:
        return (await self._api.call("GET", self._base, params={"path": path})).content

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return (await self.read(path)).decode(encoding)

    async def read_stream(self, path: str) -> AsyncGenerator[bytes, None]:
        """The file's bytes as they arrive. Leaving the loop early closes the stream (sooner with
        `contextlib.aclosing`)."""
        async with self._api.stream("GET", self._base, params={"path": path}) as response:
            async for chunk in response.aiter_bytes():
                yield chunk

    async def write(self, path: str, data: WriteData) -> FileEntry:
        """Create or replace a file, atomically, parents made as needed. `data` is streamed:
        bytes, str (UTF-8), a file object open for reading, or an (async) iterable of chunks."""
        from agentcell.protocol.files import FileEntry

        require_utf8(path)  # e.g. a local file's name made into the remote path
        content = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else iter_write_data(data)
        response = await self._api.call(
            "PUT",
            self._base,
            params={"path": path},
            content=content,
            headers={"content-type": "application/octet-stream"},
        )
        return parse_model(FileEntry, response)

    async def list(self, path: str = "/home/user", depth: int = 1) -> builtins.list[FileEntry]:
        """Entries under `path`, `depth` levels down (1..16)."""
        from agentcell.protocol.files import FileList

        params: Params = {"path": path, "depth": depth}
        return (await self._api.call_model(FileList, "GET", f"{self._base}/list", params=params)).entries

    async def stat(self, path: str) -> FileEntry:
        from agentcell.protocol.files import FileEntry

        return await self._api.call_model(FileEntry, "GET", f"{self._base}/stat", params={"path": path})

    async def exists(self, path: str) -> bool:
        try:
            await self.stat(path)
        except NotFoundError:
            return False
        return True

    async def make_dir(self, path: str) -> FileEntry:
        """mkdir -p: parents made as needed, an existing directory is fine."""
        from agentcell.protocol.files import FileEntry, MakeDir

        body = request_body(MakeDir, {"path": path})
        return await self._api.call_model(FileEntry, "POST", f"{self._base}/mkdir", json=body)

    async def rename(self, src: str, dst: str) -> FileEntry:
        from agentcell.protocol.files import FileEntry, Rename

        body = request_body(Rename, {"src": src, "dst": dst})
        return await self._api.call_model(FileEntry, "POST", f"{self._base}/rename", json=body)

    async def remove(self, path: str) -> None:
        """Remove a file, symlink or whole directory tree."""
        await self._api.call("DELETE", self._base, params={"path": path})

    def watch(self, path: str, *, recursive: bool = False) -> AsyncFileWatch:
        """The changes to the directory `path` (and, `recursive`, below it) as FileEvents, as they
        happen, until it is removed or moved or the sandbox ends: `async for event in
        sbx.files.watch(path)`, or, so that nothing done after the watch opens is missed,
        `async with sbx.files.watch(path) as watch:` then `async for event in watch`. See
        client/file_watch.py."""
        params: Params = {"path": path, "recursive": "true" if recursive else "false"}
        return AsyncFileWatch(self._api, self._base, params)

    async def upload(
        self,
        sources: LocalPath | Sequence[LocalPath],
        remote_dir: str = "/home/user",
        *,
        on_progress: ProgressCallback | None = None,
        contents: bool = False,
    ) -> builtins.list[FileEntry]:
        """Copy local files and directory trees into `remote_dir`, like `cp -r a b remote_dir/`:
        a file lands as remote_dir/<name>, a directory as remote_dir/<name>/… (with `contents`,
        as remote_dir/…, like `cp -r a/. remote_dir/`); empty directories are kept. Returns the
        files written. `on_progress` gets byte counts as they are sent. Inside a directory,
        symlinks that lead out of it and names that are not UTF-8 are skipped with a warning
        (logged, so on stderr when logging is not set up); see `plan_upload`."""
        items = [sources] if isinstance(sources, str | os.PathLike) else list(sources)
        plan = await asyncio.to_thread(plan_upload, items, contents)
        together = [f for f in plan.files if is_multipart_safe(f[1])]
        written: builtins.list[FileEntry] = []
        for start in range(0, len(together), FILES_PER_UPLOAD):
            written += await self._upload_batch(
                remote_dir, together[start : start + FILES_PER_UPLOAD], on_progress
            )
        for path, name in (f for f in plan.files if not is_multipart_safe(f[1])):
            written.append(
                await self.write(posixpath.join(remote_dir, name), iter_local_file(path, on_progress))
            )
        for name in plan.empty_dirs:
            await self.make_dir(posixpath.join(remote_dir, name))
        return written

    async def _upload_batch(
        self, remote_dir: str, files: Sequence[tuple[Path, str]], progress: ProgressCallback | None
    ) -> builtins.list[FileEntry]:
        from agentcell.protocol.files import FileList

        boundary = new_boundary()
        response = await self._api.call(
            "POST",
            f"{self._base}/upload",
            params={"dir": remote_dir},
            content=multipart_body(boundary, files, progress),
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        )
        return parse_model(FileList, response).entries

    async def download_archive(self, path: str) -> AsyncGenerator[bytes, None]:
        """A tar stream of the file or directory tree at `path`; its members are named from the
        tree's own name down (`proj`, `proj/a.txt`, …)."""
        async with self._api.stream("GET", f"{self._base}/archive", params={"path": path}) as response:
            async for chunk in response.aiter_bytes():
                yield chunk

    async def download(
        self, path: str, local_path: LocalPath, *, on_progress: ProgressCallback | None = None
    ) -> FileEntry:
        """Copy a sandbox file to exactly `local_path` (replaced atomically; its directory must
        exist, else FileNotFoundError, and it must not be a directory, else IsADirectoryError), or
        a directory's contents into `local_path` (made if missing; existing files in it are
        overwritten). Archive members that would escape `local_path` raise UnsafeArchiveError."""
        entry = await self.stat(path)
        target = Path(local_path)
        if entry.type == "dir":
            await self._download_tree(entry.path, target, on_progress)
        else:
            await self._download_file(entry, target, on_progress)
        return entry

    async def _download_file(self, entry: FileEntry, target: Path, progress: ProgressCallback | None) -> None:
        await asyncio.to_thread(_require_file_target, target)
        spool = await asyncio.to_thread(_partial_file, target)
        try:
            with spool:
                await _spool(self.read_stream(entry.path), spool, progress)
            # the sandbox's permission bits, minus group/other write (as tar's `data` filter does)
            await asyncio.to_thread(os.chmod, spool.name, entry.mode & 0o755 or 0o644)
            await asyncio.to_thread(os.replace, spool.name, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(spool.name)
            raise

    async def _download_tree(self, path: str, target: Path, progress: ProgressCallback | None) -> None:
        with await asyncio.to_thread(tempfile.TemporaryFile) as spool:
            await _spool(self.download_archive(path), spool, progress)
            await asyncio.to_thread(spool.seek, 0)
            await asyncio.to_thread(extract_tree, spool, target)


def _require_file_target(target: Path) -> None:
    """Refuse, naming the user's own path, a file download that could not land at `target`."""
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory; give the file's path inside it", str(target))
    if not target.parent.is_dir():
        raise FileNotFoundError(
            errno.ENOENT, "no such directory to download into; make it first", str(target.parent)
        )


def _partial_file(target: Path) -> IO[bytes]:
    """Where a download goes until it is complete: beside its target, so the rename is atomic."""
    return tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False)


async def _spool(
    chunks: AsyncGenerator[bytes, None], file: IO[bytes], progress: ProgressCallback | None
) -> None:
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            await asyncio.to_thread(file.write, chunk)
            if progress:
                progress(len(chunk))
