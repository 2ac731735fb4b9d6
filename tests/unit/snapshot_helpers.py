"""Helpers shared by the snapshot tests: workspaces on tmp dirs, dir fds, tree comparison."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentcell.server.storage.local import LocalObjectStore
from agentcell.server.storage.manifest import HEADER_BYTES, MAGIC

OLD_NS = 1_600_000_000 * 10**9  # an mtime far before any walk: "unchanged" is trusted


@contextlib.contextmanager
def dir_fd(path: Path, flags: int = os.O_RDONLY) -> Iterator[int]:
    fd = os.open(path, flags | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def write(root: Path, rel: str, data: bytes, mode: int = 0o644, mtime_ns: int | None = OLD_NS) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def age(root: Path) -> None:
    """Give every entry an old mtime (as a workspace that has been sitting for a while)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, ns=(OLD_NS, OLD_NS), follow_symlinks=False)


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Everything a restore must reproduce: kind, mode, mtime, and bytes or link target."""
    found: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("l", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                found[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_mtime_ns, path.read_bytes())
    return found


def object_files(store: LocalObjectStore, prefix: str) -> list[str]:
    base = store.root / prefix
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def read_manifest(store: LocalObjectStore, key: str) -> dict[str, Any]:
    """The manifest's JSON body (as a tamperer would edit it); its inline bytes under "_inline"."""
    data = (store.root / key).read_bytes()
    assert data.startswith(MAGIC)
    end = HEADER_BYTES + int.from_bytes(data[len(MAGIC) : HEADER_BYTES], "big")
    body: dict[str, Any] = json.loads(zlib.decompress(data[HEADER_BYTES:end]))
    body["_inline"] = data[end:]
    return body


def write_manifest(store: LocalObjectStore, key: str, body: dict[str, Any]) -> None:
    inline = body.pop("_inline", b"")
    packed = zlib.compress(json.dumps(body).encode())
    (store.root / key).write_bytes(MAGIC + len(packed).to_bytes(8, "big") + packed + inline)
