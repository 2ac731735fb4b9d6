"""Secrets of this node that must outlive a restart: the keys that derive sandboxes' access tokens
(E2B's envd access token, the traffic access token of private ports). With a new key at every
start, a restart changed every token: an SDK object made before it was refused by its own
sandbox, and a paused sandbox with `auto_resume` could not be woken by its client's next call.

Each is 32 random bytes in `<state_dir>/secrets/<name>`, made on first use (a directory of mode
0700, files of 0600, written whole and renamed into place, so a crash leaves no half key).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

KEY_BYTES = 32


def node_secret(state_dir: Path, name: str) -> bytes:
    """The node's secret `name`, made now if it has none (or one of the wrong size)."""
    directory = state_dir / "secrets"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / name
    with contextlib.suppress(FileNotFoundError):
        kept = path.read_bytes()
        if len(kept) == KEY_BYTES:
            return kept
    key = secrets.token_bytes(KEY_BYTES)
    temp = directory / f".{name}.{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, key)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    return key
