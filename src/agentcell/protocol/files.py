"""Files inside a sandbox: entries, and the small JSON requests; bytes travel raw.

Names on the wire are text. A sandbox file whose name is not valid UTF-8 (Linux allows any bytes
but `/` and NUL) is listed with each undecodable byte shown as U+FFFD; such a name cannot be
given back as a path, so that file is reached through its directory (an archive of it, or a
command in the sandbox) or renamed there. Archives carry names as the exact bytes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, TypeAdapter

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


def _as_wire_text(value: object) -> object:
    return wire_text(value) if isinstance(value, str) else value


WireText = Annotated[str, BeforeValidator(_as_wire_text)]
"""a file name or path, as valid Unicode on the wire (see `wire_text`)"""


class FileEntry(ReplyModel):
    path: WireText
    name: WireText
    type: FileType
    size: int
    mode: int
    mtime: datetime
    symlink_target: WireText | None = None


class FileList(ReplyModel):
    entries: list[FileEntry]


class MakeDir(WireModel):
    path: SandboxPath


class Rename(WireModel):
    src: SandboxPath
    dst: SandboxPath


class WriteResult(ReplyModel):
    entries: list[FileEntry] = Field(default_factory=list)


# -- watches: GET .../files/watch answers NDJSON lines, each one of these (`type` tells which) ----

WatchEventKind = Literal["create", "write", "remove", "rename", "chmod"]


class WatchStart(ReplyModel):
    """The first line: the watch is open; later changes are all reported."""

    type: Literal["start"] = "start"
    path: WireText
    """the watched directory, absolute"""


class WatchEvent(ReplyModel):
    """One change: `create` (made, or moved in), `write`, `remove`, `rename` (moved away; its new
    name, if in the tree, comes as a `create`) or `chmod` (mode, owner or times changed)."""

    type: Literal["event"] = "event"
    kind: WatchEventKind
    name: WireText
    """relative to the watched directory"""
    path: WireText
    """absolute"""


class WatchOverflow(ReplyModel):
    """Sent once: changes were dropped (too many unread); list the directory to catch up."""

    type: Literal["overflow"] = "overflow"


class WatchKeepalive(ReplyModel):
    """Sent after a quiet while, so that proxies keep the stream open."""

    type: Literal["keepalive"] = "keepalive"


class WatchEnd(ReplyModel):
    """The last line: why the watch ended (its directory removed or moved, its sandbox ended)."""

    type: Literal["end"] = "end"
    reason: str


WatchLine = Annotated[
    WatchStart | WatchEvent | WatchOverflow | WatchKeepalive | WatchEnd, Field(discriminator="type")
]
WATCH_LINE: TypeAdapter[WatchLine] = TypeAdapter(WatchLine)
