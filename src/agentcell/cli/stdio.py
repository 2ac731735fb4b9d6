"""This process's end of a command's streams, for `agentcell exec` and `run-code`: the piped stdin
that is sent, the output that is relayed. Stdlib only: `agentcell.cli.quick` runs a plain `exec`
with the same functions before click is imported."""

from __future__ import annotations

import sys
from typing import BinaryIO, TextIO

STDIN_NOT_TEXT = "stdin is not UTF-8 text; pass a file with `agentcell cp` instead, or use -n"


class StdinNotText(ValueError):
    """Piped stdin that cannot be sent: commands take text."""


def piped_stdin() -> bytes | None:
    """All of stdin when it is a pipe or a file; None when it is a terminal, or there is none."""
    if sys.stdin is None or sys.stdin.closed or sys.stdin.isatty():
        return None
    return sys.stdin.buffer.read()


def stdin_text(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise StdinNotText(STDIN_NOT_TEXT) from None


def relay(stream: TextIO, data: str) -> None:
    """Write one chunk of output at once: as the bytes the command wrote (the server's text, its
    undecodable bytes as surrogates, goes back to bytes), flushed so that it shows as it comes."""
    buffer: BinaryIO | None = getattr(stream, "buffer", None)
    if buffer is not None:
        buffer.write(data.encode(errors="surrogateescape"))
        buffer.flush()
    else:  # a replaced stream without bytes underneath
        stream.write(data)
        stream.flush()
