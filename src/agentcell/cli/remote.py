"""`SANDBOX_ID:PATH`: a place in a sandbox, as `cp` and `watch` take it on the command line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REMOTE = re.compile(r"(?P<sandbox_id>[A-Za-z0-9][A-Za-z0-9_.-]*):(?P<path>.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Remote:
    sandbox_id: str
    path: str


def parse_location(text: str) -> Remote | Path:
    """`ID:PATH` is in a sandbox; anything else (write `./a:b` for a local name with a colon) is local."""
    match = REMOTE.fullmatch(text)
    if match is None:
        return Path(text)
    return Remote(match["sandbox_id"], match["path"] or "/home/user")
