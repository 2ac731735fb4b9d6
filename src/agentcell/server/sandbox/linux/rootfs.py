"""The host-side half of a sandbox's root filesystem (the helper builds the rest inside).

Prepared once per driver under the state dir:

* `etc-skel/<hash>/`: the upper lower-layer of every sandbox's `/etc` overlay. It holds a
  `passwd`/`group` with the sandbox user, a `resolv.conf` for a host without network, and
  whiteouts (char 0/0) over every host `/etc` entry the world may not read (shadow, gshadow,
  ssh host keys, sudoers...), so those names do not even exist inside. The name is a hash of
  the content: a changed host `/etc` gets a new skeleton while running sandboxes keep theirs.
* `mnt/`: an empty directory each helper mounts its instance's tmpfs on, inside the instance's
  own mount namespace (the host's mount table never holds it).

Paths given to the helper end up in overlay mount options, where `,`, `:` and `\\` are
separators, so the state dir may not contain them.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from agentcell.errors import Unavailable
from agentcell.server.sandbox.driver import SANDBOX_HOME, SANDBOX_UID, SANDBOX_USER

HOST_ETC = Path("/etc")
RESOLV_CONF = b"# agentcell sandboxes have no network; nothing to resolve.\n"
WHITEOUT_DEV = os.makedev(0, 0)


@dataclass(frozen=True, slots=True)
class RootfsPaths:
    etc_skel: Path
    root_mnt: Path


@dataclass(frozen=True, slots=True)
class _DirMeta:
    mode: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class _Skeleton:
    files: dict[str, bytes]
    whiteouts: list[str]
    dirs: dict[str, _DirMeta]
    """parent directories the whiteouts need, with the host's mode and owner"""

    def digest(self) -> str:
        h = hashlib.sha256()
        for name, data in sorted(self.files.items()):
            h.update(b"f\0" + name.encode() + b"\0" + hashlib.sha256(data).digest())
        for name in self.whiteouts:
            h.update(b"w\0" + name.encode() + b"\0")
        for name, meta in sorted(self.dirs.items()):
            h.update(f"d\0{name}\0{meta.mode}\0{meta.uid}\0{meta.gid}\0".encode())
        return h.hexdigest()[:12]


def prepare_rootfs(state_dir: Path) -> RootfsPaths:
    """Make sure the skeleton for the host's current /etc and the mount point exist."""
    check_path(state_dir)
    root_mnt = state_dir / "mnt"
    root_mnt.mkdir(mode=0o700, exist_ok=True)
    skeleton = _skeleton(HOST_ETC)
    skel_root = state_dir / "etc-skel"
    skel_root.mkdir(mode=0o700, exist_ok=True)
    target = skel_root / skeleton.digest()
    if not target.is_dir():
        _build(skeleton, skel_root, target)
    return RootfsPaths(etc_skel=target, root_mnt=root_mnt)


def remove_stale_skeletons(state_dir: Path, keep: Path) -> None:
    """Drop skeletons of an older host /etc (call when no instance can still use them)."""
    skel_root = state_dir / "etc-skel"
    for entry in skel_root.iterdir() if skel_root.is_dir() else ():
        if entry != keep:
            shutil.rmtree(entry, ignore_errors=True)


def check_path(path: Path) -> None:
    text = str(path)
    if any(c in text for c in ",:\\") or not path.is_absolute():
        raise Unavailable(f"the sandbox state dir must be an absolute path without , : or \\, got {text}")


def _skeleton(etc: Path) -> _Skeleton:
    files = {
        "passwd": _with_sandbox_user(
            etc / "passwd", f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}::{SANDBOX_HOME}:/bin/bash"
        ),
        "group": _with_sandbox_user(etc / "group", f"{SANDBOX_USER}:x:{SANDBOX_UID}:"),
        "resolv.conf": RESOLV_CONF,
    }
    whiteouts = [p for p in _unreadable(etc) if p not in files]
    dirs: dict[str, _DirMeta] = {}
    for rel in whiteouts:
        for parent in Path(rel).parents:
            if str(parent) != ".":
                st = os.lstat(etc / parent)
                dirs[str(parent)] = _DirMeta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return _Skeleton(files=files, whiteouts=whiteouts, dirs=dirs)


def _with_sandbox_user(path: Path, entry: str) -> bytes:
    """The host's lines minus any that claim the sandbox user's name or id, plus ours."""
    name, _, ident = entry.split(":")[:3]
    kept = []
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and (fields[0] == name or fields[2] == ident):
            continue
        kept.append(line)
    return ("\n".join([*kept, entry]) + "\n").encode()


def _unreadable(etc: Path) -> list[str]:
    """Relative paths under etc that others may not read (files) or enter (directories)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(etc):
        base = Path(dirpath)
        for name in list(dirnames):
            st = os.lstat(base / name)
            if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o005 != 0o005:
                found.append(str((base / name).relative_to(etc)))
                dirnames.remove(name)
        for name in filenames:
            st = os.lstat(base / name)
            if stat.S_ISREG(st.st_mode) and not st.st_mode & 0o004:
                found.append(str((base / name).relative_to(etc)))
    return sorted(found)


def _build(skeleton: _Skeleton, skel_root: Path, target: Path) -> None:
    """Build in a temporary directory and rename, so that a skeleton is complete or absent."""
    tmp = skel_root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(mode=0o755)
    try:
        for rel, meta in sorted(skeleton.dirs.items()):
            (tmp / rel).mkdir()
            os.chown(tmp / rel, meta.uid, meta.gid)
            os.chmod(tmp / rel, meta.mode)
        for rel, data in skeleton.files.items():
            (tmp / rel).write_bytes(data)
            os.chmod(tmp / rel, 0o644)
        for rel in skeleton.whiteouts:
            os.mknod(tmp / rel, stat.S_IFCHR | 0o000, WHITEOUT_DEV)
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not target.is_dir():  # another driver may have won the race with the same content
            raise
