"""agentcell's own /mcp: what a `run_command` answer keeps of a long output."""

from __future__ import annotations

from agentcell.server.api.mcp import HeadAndTail


def test_short_output_is_kept_whole() -> None:
    kept = HeadAndTail(10)
    for part in ("ab", "c", "", "de"):
        kept.add(part)
    assert kept.text() == "abcde"


def test_long_output_keeps_its_head_and_tail_and_says_how_much_went() -> None:
    kept = HeadAndTail(10)
    for part in ("01234", "56789", "abcdefghij", "KLMNO"):
        kept.add(part)
    head, marker, tail = kept.text().split("\n")
    assert (head, tail) == ("01234", "KLMNO")
    assert marker == "[agentcell: 15 characters of output left out here]"


def test_one_huge_part_is_cut_the_same_way() -> None:
    kept = HeadAndTail(4)
    kept.add("x" * 1000 + "yz")
    assert kept.text() == "xx\n[agentcell: 998 characters of output left out here]\nyz"
