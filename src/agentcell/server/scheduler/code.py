"""Function code on the node: a tar archive unpacked safely into an immutable, read-only directory."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from pathlib import Path, PurePosixPath

from agentcell.errors import InvalidArgument, PayloadTooLarge

MAX_CODE_BYTES = 1 << 30
MAX_CODE_FILES = 100_000


def _check_member(member: tarfile.TarInfo) -> None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise InvalidArgument(f"code archive entry {member.name!r} must be a relative path without '..'")
    if not (member.isfile() or member.isdir() or member.issym()):
        raise InvalidArgument(f"code archive entry {member.name!r}: only files, directories and symlinks")


def unpack_code(archive: Path, target: Path) -> int:
    """Unpack a tar (optionally gzip/bz2/xz) into `target`; returns the number of entries.

    Symlinks are kept as links; they resolve inside the instance, where /code is read-only.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            if len(members) > MAX_CODE_FILES:
                raise PayloadTooLarge(f"code archive has {len(members)} entries; at most {MAX_CODE_FILES}")
            if sum(m.size for m in members) > MAX_CODE_BYTES:
                raise PayloadTooLarge(f"code unpacks to more than {MAX_CODE_BYTES >> 20} MiB")
            for member in members:
                _check_member(member)
            target.mkdir(parents=True)
            tar.extractall(target, members=members, filter="tar")
    except tarfile.TarError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise InvalidArgument(f"code must be a tar archive (tar, tar.gz, tar.bz2 or tar.xz): {exc}") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    _make_read_only(target)
    return len(members)


def _make_read_only(root: Path) -> None:
    """Owned by root, readable (and where it was, executable) by everyone, writable by nobody."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                continue
            executable = 0o555 if stat.S_ISDIR(mode) or mode & 0o111 else 0o444
            os.chown(path, 0, 0)
            os.chmod(path, executable)
    os.chmod(root, 0o555)
