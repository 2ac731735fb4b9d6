"""Files inside a sandbox: entries, and the small JSON requests; bytes travel raw."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from agentcell.protocol.commands import SandboxPath
from agentcell.protocol.common import ReplyModel, WireModel

FileType = Literal["file", "dir", "symlink", "other"]


class FileEntry(ReplyModel):
    path: str
    name: str
    type: FileType
    size: int
    mode: int
    mtime: datetime
    symlink_target: str | None = None


class FileList(ReplyModel):
    entries: list[FileEntry]


class MakeDir(WireModel):
    path: SandboxPath


class Rename(WireModel):
    src: SandboxPath
    dst: SandboxPath


class WriteResult(ReplyModel):
    entries: list[FileEntry] = Field(default_factory=list)
