"""What a JavaScript or bash kernel's output costs the server to split into frames."""

from __future__ import annotations

import time

from agentcell.server.interpreter.runner import RS, _Framer

CHUNK = b"y" * 65536
CHUNKS = 128  # 8 MiB, under the 16 MiB past which an unended frame is taken for raw text


def seconds_to_feed(first: bytes) -> float:
    framer = _Framer("stdout")
    start = time.perf_counter()
    framer.feed(first)
    for _ in range(CHUNKS):
        framer.feed(CHUNK)
    return time.perf_counter() - start


def test_a_long_unended_frame_costs_what_raw_text_does() -> None:
    """Output that begins with the frame mark and has no newline was searched for its newline from
    its start at every read, and copied whole at every read: 16 MiB of it cost the event loop
    0.4-2 s here (a hundred times as much raw text). Self-calibrating: it now costs about what as
    much raw text does."""
    raw = min(seconds_to_feed(b"x") for _ in range(3))
    unended = min(seconds_to_feed(RS) for _ in range(3))
    assert unended < 5 * raw + 0.01, f"{unended:.4f} s against {raw:.4f} s for raw text"


def test_a_frame_split_across_reads_is_still_one_frame() -> None:
    framer = _Framer("stdout")
    parts = [RS + b'{"msg_type":"stream","id":"a","con', b'tent":{"name":"stdout","text":"hi"}}', b"\nraw"]
    items = [item for part in parts for item in framer.feed(part)]
    assert [(i.message.msg_type if i.message else None, i.request_id) for i in items] == [
        ("stream", "a"),
        ("stream", None),
    ]
    assert items[0].message is not None and items[0].message.content["text"] == "hi"
    assert items[1].message is not None and items[1].message.content["text"] == "raw"
