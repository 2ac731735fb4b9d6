"""What keeping a `run_command`/`run_code` answer's tail costs the server per piece of output."""

from __future__ import annotations

import time

from agentcell.server.api.mcp import MAX_OUTPUT_CHARS, HeadAndTail

PIECES = 20_000


def seconds_to_add(limit: int) -> float:
    kept = HeadAndTail(limit)
    kept.add("h" * limit)  # the head is full: every piece now goes through the tail
    start = time.perf_counter()
    for i in range(PIECES):
        kept.add(f"{i}\n")
    return time.perf_counter() - start


def test_a_small_piece_costs_its_own_length_not_the_kept_tail_s() -> None:
    """Each small piece of a flood of prints copied the whole kept tail (128K characters), about
    ten times the cost of a piece with a 16-character tail, on the event loop. Self-calibrating: a
    long tail now costs about what a short one does."""
    small = min(seconds_to_add(32) for _ in range(3))
    large = min(seconds_to_add(MAX_OUTPUT_CHARS) for _ in range(3))
    assert large < 4 * small + 0.005, f"{large:.4f} s against {small:.4f} s"


def test_pieces_that_overflow_the_tail_keep_its_last_characters_exactly() -> None:
    kept = HeadAndTail(8)
    for part in ("0123", "4567", "ab", "cdef", "g"):
        kept.add(part)
    assert kept.text() == "0123\n[agentcell: 7 characters of output left out here]\ndefg"
