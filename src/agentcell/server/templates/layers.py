"""LayerStore: template layers on the node's disk, built in a staging dir and moved into place whole.

    <state>/templates/<name>/manifest.json   the template's record (what GET /v1/templates shows)
    <state>/templates/<name>/layer/          the read-only layer, root-owned once sealed
    <state>/templates/.builds/<build id>/    a build in progress: its layer is writable by the
                                             sandbox user while the build's sandbox runs
    <state>/templates/.trash/                deleted templates, removed in the background

A template exists exactly when `<name>/manifest.json` does: a build writes the manifest inside its
staging dir and renames the whole dir to `<name>` (one atomic rename), so a crash or a failed
step leaves only a `.builds` entry, which the next start removes. Blocking I/O: callers run
these methods in a worker thread.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from agentcell.server.sandbox.driver import SANDBOX_UID

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LAYER = "layer"


class LayerStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._builds = root / ".builds"
        self._trash = root / ".trash"

    def prepare(self) -> None:
        """Make the dirs and drop what an earlier server left half-done (builds, deletions)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for scratch in (self._builds, self._trash):
            _remove_quietly(scratch)
            scratch.mkdir(mode=0o700)

    def manifests(self) -> dict[str, bytes]:
        """name → manifest bytes of every installed template."""
        found = {}
        for entry in sorted(self.root.iterdir()):
            manifest = entry / MANIFEST
            if not entry.name.startswith(".") and manifest.is_file():
                found[entry.name] = manifest.read_bytes()
        return found

    def layer_path(self, name: str) -> Path:
        return self.root / name / LAYER

    def new_staging(self, build_id: str) -> Path:
        """An empty layer dir the build's sandbox user may write (it is bound at /opt/template)."""
        layer = self._builds / build_id / LAYER
        layer.mkdir(parents=True, mode=0o755)
        os.chmod(layer.parent, 0o700)
        os.chown(layer, SANDBOX_UID, SANDBOX_UID)
        return layer

    def staging(self, build_id: str) -> Path:
        return self._builds / build_id / LAYER

    def seal(self, build_id: str) -> int:
        """Make a finished build's layer root-owned and plain (no setuid, no device, fifo or socket
        files, nothing writable by others) and return its size in bytes (`tree_bytes`). Call only
        once the build's sandbox is gone, so that nothing can change the tree while it is walked.
        Raises LayerRefused (a tree too deep)."""
        return seal_tree(self._builds / build_id / LAYER)

    def install(self, build_id: str, name: str, manifest: bytes) -> Path:
        """Publish a sealed build as template `name` (atomic). FileExistsError if it exists."""
        staging = self._builds / build_id
        tmp = staging / f".{MANIFEST}.tmp"
        tmp.write_bytes(manifest)
        os.rename(tmp, staging / MANIFEST)
        target = self.root / name
        if target.exists():
            raise FileExistsError(str(target))
        os.rename(staging, target)
        return target / LAYER

    def discard(self, build_id: str) -> None:
        self._remove(self._builds / build_id)

    def remove(self, name: str) -> None:
        """Unpublish at once (rename into the trash), then delete the files."""
        target = self.root / name
        if target.exists():
            self._remove(target)

    def _remove(self, path: Path) -> None:
        doomed = self._trash / f"{path.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return
        _remove_quietly(doomed)


def _remove_quietly(path: Path) -> None:
    """Remove a tree; a failure is logged, not raised (it is left in scratch space, which the
    next start clears)."""
    try:
        remove_tree(path)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


class LayerRefused(Exception):
    """The layer has a shape the node will not take; the message ends "step X made ..."."""


MAX_LAYER_DEPTH = 256
"""directory levels a layer may have (real toolchains stay far below: node_modules tops out
near 30); a deeper tree fails its build instead of exhausting the walker's file descriptors"""
ENTRY_BYTES = 4096
"""what an entry costs the node's disk at least: an inode, a block for most file systems"""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def seal_tree(top: Path) -> int:
    """chown -R 0:0 without following symlinks, modes reduced to 0755/0644, specials removed;
    returns the layer's size (`tree_bytes`). Walks by directory fds, so no path is too long."""
    return _walk(top, _seal_entry, _seal_dir)


def tree_bytes(top: Path) -> int:
    """What the tree under `top` costs the node's disk: each entry's blocks, and at least
    ENTRY_BYTES (empty files and dirs cost inodes). Symlinks are not followed, vanishing entries
    are skipped. Raises LayerRefused for a tree deeper than MAX_LAYER_DEPTH."""
    return _walk(top, lambda parent, name, st: None, lambda fd: None)


def _walk(
    top: Path,
    on_entry: Callable[[int, str, os.stat_result], None],
    on_dir: Callable[[int], None],
) -> int:
    """Depth-first over dir fds (one per level), never following a link: `on_dir(fd)` for every
    directory (top included) before its entries are listed, `on_entry(parent_fd, name, st)` for
    every entry that is not a directory. Returns the bytes the tree costs (see `tree_bytes`)."""
    root = os.open(top, _DIR_FLAGS)
    stack: list[tuple[int, list[str]]] = []
    size = 0
    try:
        on_dir(root)
        stack.append((root, _names(root)))
        while stack:
            fd, names = stack[-1]
            if not names:
                os.close(fd)
                stack.pop()
                continue
            name = names.pop()
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                size += max(st.st_blocks * 512, ENTRY_BYTES)
                if not stat.S_ISDIR(st.st_mode):
                    on_entry(fd, name, st)
                    continue
                if len(stack) >= MAX_LAYER_DEPTH:
                    raise LayerRefused(f"the layer more than {MAX_LAYER_DEPTH} levels deep")
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise
                continue  # removed or replaced while the build's step runs
            stack.append((child, []))
            on_dir(child)
            stack[-1] = (child, _names(child))
    finally:
        for fd, _ in stack:
            os.close(fd)
    return size


def _names(fd: int) -> list[str]:
    with os.scandir(fd) as listing:
        return [entry.name for entry in listing]


def _seal_entry(parent: int, name: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        os.chown(name, 0, 0, dir_fd=parent, follow_symlinks=False)
    elif stat.S_ISREG(st.st_mode):
        fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
        try:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, 0o755 if st.st_mode & 0o111 else 0o644)
        finally:
            os.close(fd)
    else:
        os.unlink(name, dir_fd=parent)  # fifos and sockets: a layer holds files, dirs and symlinks only


def _seal_dir(fd: int) -> None:
    os.fchown(fd, 0, 0)
    os.fchmod(fd, 0o755)


REMOVE_DEPTH = 64
"""directory levels `remove_tree` descends before it moves a subtree up to be removed later"""


def remove_tree(top: Path) -> None:
    """rm -rf `top` (gone already is fine), whatever its depth, without recursion or a file
    descriptor per level: a directory found REMOVE_DEPTH levels down is moved up into `top` and
    removed by a later pass. Call it on a tree nothing else changes (a build's sandbox is gone);
    errors are raised."""
    try:
        root = os.open(top, _DIR_FLAGS)
    except FileNotFoundError:
        return
    try:
        moved = 0
        while names := _names(root):
            for name in names:
                moved = _remove_in(root, name, moved)
    finally:
        os.close(root)
    os.rmdir(top)


def _remove_in(root: int, name: str, moved: int) -> int:
    """Remove `name` in `root` down to REMOVE_DEPTH levels; deeper directories are renamed into
    `root` (as `.deep-<n>-<random>`) for the next pass. Returns how many were moved so far."""
    try:
        os.unlink(name, dir_fd=root)
        return moved
    except IsADirectoryError:
        pass
    first = os.open(name, _DIR_FLAGS, dir_fd=root)
    stack = [(first, name, _names(first))]
    try:
        while stack:
            fd, dir_name, names = stack[-1]
            if not names:
                os.close(fd)
                stack.pop()
                os.rmdir(dir_name, dir_fd=stack[-1][0] if stack else root)
                continue
            entry = names.pop()
            try:
                os.unlink(entry, dir_fd=fd)
                continue
            except IsADirectoryError:
                pass
            if len(stack) >= REMOVE_DEPTH:
                moved += 1
                os.rename(entry, f".deep-{moved}-{uuid.uuid4().hex[:8]}", src_dir_fd=fd, dst_dir_fd=root)
                continue
            child = os.open(entry, _DIR_FLAGS, dir_fd=fd)
            stack.append((child, entry, _names(child)))
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return moved
