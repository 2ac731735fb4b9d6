"""envd's EntryInfo (proto3 JSON) from agentcell's FileStat."""

from __future__ import annotations

import stat as st
from typing import Any

from agentcell.server.sandbox.driver import SANDBOX_USER, FileStat

FILE_TYPES = {"file": "FILE_TYPE_FILE", "dir": "FILE_TYPE_DIRECTORY", "symlink": "FILE_TYPE_SYMLINK"}
TYPE_BITS = {"file": st.S_IFREG, "dir": st.S_IFDIR, "symlink": st.S_IFLNK}


def permissions(stat: FileStat) -> str:
    """`ls -l` style, e.g. `drwxr-xr-x`."""
    return st.filemode(TYPE_BITS.get(stat.type, 0) | stat.mode)


def entry_info(stat: FileStat) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": stat.name,
        "type": FILE_TYPES.get(stat.type, "FILE_TYPE_UNSPECIFIED"),
        "path": stat.path,
        "size": str(stat.size),
        "mode": stat.mode,
        "permissions": permissions(stat),
        "owner": SANDBOX_USER,
        "group": SANDBOX_USER,
        "modifiedTime": stat.mtime.isoformat().replace("+00:00", "Z"),
    }
    if stat.symlink_target is not None:
        info["symlinkTarget"] = stat.symlink_target
    return info
