"""`agentcell cp`: copy files and directory trees between this machine and a sandbox.

    agentcell cp ./local SANDBOX_ID:/remote/path      upload (directories recursively)
    agentcell cp SANDBOX_ID:/remote/path ./local      download (directories via a tar archive,
                                                      unpacked safely)

Like `cp -r`: when the destination is an existing directory the source lands inside it under its
own name; otherwise the destination is the copy's new name. A file copied to a destination written
with a trailing `/` lands inside it, that directory made if missing (both ways).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from pathlib import Path

import click

from agentcell.cli.context import CliError, Connection, pass_connection
from agentcell.cli.output import echo_json, json_option
from agentcell.cli.progress import Progress
from agentcell.cli.remote import Remote, parse_location
from agentcell.client import NotFoundError, Sandbox
from agentcell.protocol.files import FileEntry

CHUNK_BYTES = 1 << 20


@click.command("cp")
@click.argument("source")
@click.argument("destination")
@json_option
@pass_connection
def copy(conn: Connection, source: str, destination: str, as_json: bool) -> None:
    """Copy SOURCE to DESTINATION; exactly one of them is SANDBOX_ID:PATH. Prints nothing (--json:
    source, destination as it landed, type and bytes sent)."""
    src, dst = parse_location(source), parse_location(destination)
    if isinstance(src, Remote) == isinstance(dst, Remote):
        raise click.UsageError("exactly one of SOURCE and DESTINATION must be SANDBOX_ID:PATH")
    progress = Progress("uploading" if isinstance(dst, Remote) else "downloading")
    try:
        if isinstance(dst, Remote):
            assert isinstance(src, Path)
            entry, landed = upload(conn, src, dst, progress)
        else:
            assert isinstance(src, Remote)
            entry, landed = download(conn, src, dst, progress, names_dir(destination))
    finally:
        progress.finish()
    if as_json:
        bytes_sent = progress.total_bytes
        echo_json({"source": source, "destination": landed, "type": entry.type, "bytes": bytes_sent})


def upload(conn: Connection, src: Path, dst: Remote, progress: Progress) -> tuple[FileEntry, str]:
    if not src.exists():
        raise CliError(f"{src}: no such file or directory")
    with conn.sandbox(dst.sandbox_id) as sandbox:
        existing = _stat_or_none(sandbox, dst.path)
        into_dir = existing is not None and existing.type == "dir"
        if src.is_dir():
            return _upload_tree(sandbox, src, dst.path, into_dir, progress)
        target = posixpath.join(dst.path, src.name) if into_dir or dst.path.endswith("/") else dst.path
        entry = sandbox.files.write(target, _read_chunks(src, progress))
        return entry, f"{dst.sandbox_id}:{entry.path}"


def _upload_tree(
    sandbox: Sandbox, src: Path, remote: str, into_dir: bool, progress: Progress
) -> tuple[FileEntry, str]:
    if into_dir:  # lands as remote/<name>/…
        sandbox.files.upload([src], remote, on_progress=progress.add)
        remote = posixpath.join(remote, src.resolve().name)
    else:  # remote is the copy itself: its contents are src's contents (links out of src skipped)
        sandbox.files.make_dir(remote)
        sandbox.files.upload([src], remote, contents=True, on_progress=progress.add)
    entry = sandbox.files.stat(remote)
    return entry, f"{sandbox.id}:{entry.path}"


def names_dir(location: str) -> bool:
    """`dir/`: a destination written as a directory (the slash that Path drops)."""
    return location.endswith(("/", os.sep))


def download(
    conn: Connection, src: Remote, dst: Path, progress: Progress, dst_is_dir: bool = False
) -> tuple[FileEntry, str]:
    """Like `upload`: a file copied to `dir/` lands as dir/<name>, the directory made if missing."""
    with conn.sandbox(src.sandbox_id) as sandbox:
        entry = sandbox.files.stat(src.path)
        if dst_is_dir and entry.type != "dir":
            dst.mkdir(parents=True, exist_ok=True)
        target = dst / entry.name if dst.is_dir() else dst
        if entry.type == "dir" and target.exists() and not target.is_dir():
            raise CliError(f"{target}: exists and is not a directory")
        sandbox.files.download(entry.path, target, on_progress=progress.add)
        return entry, str(target)


def _stat_or_none(sandbox: Sandbox, path: str) -> FileEntry | None:
    try:
        return sandbox.files.stat(path)
    except NotFoundError:
        return None


def _read_chunks(path: Path, progress: Progress) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            progress.add(len(chunk))
            yield chunk
