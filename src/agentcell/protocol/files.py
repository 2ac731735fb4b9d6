"""Files inside a sandbox: entries, and the small JSON requests; bytes travel raw.

Names on the wire are text. A sandbox file whose name is not valid UTF-8 (Linux allows any bytes
but `/` and NUL) is listed with each undecodable byte shown as U+FFFD; such a name cannot be
given back as a path, so that file is reached through its directory (an archive of it, or a
command in the sandbox) or renamed there. Archives carry names as the exact bytes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from agentcell.protocol.commands import SandboxPath
from agentcell.protocol.common import ReplyModel, WireModel

FileType = Literal["file", "dir", "symlink", "other"]


def wire_text(name: str) -> str:
    """`name` as valid Unicode, for JSON: the bytes of a non-UTF-8 file name (which Python's `os`
    keeps as lone surrogates) each become U+FFFD, and so does any other lone surrogate (a kernel's
    JSON may carry one)."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file name decodes to
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in name)
    return raw.decode("utf-8", "replace")


class FileEntry(ReplyModel):
    path: str
    name: str
    type: FileType
    size: int
    mode: int
    mtime: datetime
    symlink_target: str | None = None

    @field_validator("path", "name", "symlink_target", mode="before")
    @classmethod
    def _as_wire_text(cls, value: object) -> object:
        return wire_text(value) if isinstance(value, str) else value


class FileList(ReplyModel):
    entries: list[FileEntry]


class MakeDir(WireModel):
    path: SandboxPath


class Rename(WireModel):
    src: SandboxPath
    dst: SandboxPath


class WriteResult(ReplyModel):
    entries: list[FileEntry] = Field(default_factory=list)
