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

import os
import shutil
import stat
import uuid
from pathlib import Path

from agentcell.server.sandbox.driver import SANDBOX_UID

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
            shutil.rmtree(scratch, ignore_errors=True)
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
        files, nothing writable by others) and return its size in bytes. Call only once the build's
        sandbox is gone, so that nothing can change the tree while it is walked."""
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
        shutil.rmtree(doomed, ignore_errors=True)


def seal_tree(top: Path) -> int:
    """chown -R 0:0 without following symlinks, modes reduced to 0755/0644, specials removed."""
    size = 0
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        _seal_dir(Path(dirpath))
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                os.lchown(path, 0, 0)
            elif stat.S_ISREG(st.st_mode):
                os.chown(path, 0, 0)
                os.chmod(path, 0o755 if st.st_mode & 0o111 else 0o644)
                size += st.st_blocks * 512
            elif not stat.S_ISDIR(st.st_mode):
                os.unlink(path)  # fifos and sockets: a layer holds files, dirs and symlinks only
    return size


def tree_bytes(top: Path) -> int:
    """Disk blocks used by the files under `top` (symlinks not followed; vanishing entries skipped)."""
    size = 0
    for dirpath, _, filenames in os.walk(top, followlinks=False):
        for name in filenames:
            try:
                size += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return size


def _seal_dir(path: Path) -> None:
    os.chown(path, 0, 0)
    os.chmod(path, 0o755)
