"""`WriteStall`, the clock of the gateway's send timeout: only a peer that took nothing for a whole
timeout is late; any progress seen at a check restarts the clock."""

from __future__ import annotations

from agentcell.server.gateway.connection import WriteStall

TIMEOUT_S = 60.0


def test_a_peer_that_takes_nothing_is_late_once_the_timeout_has_passed() -> None:
    stall = WriteStall(100.0, 4096)
    assert not stall.is_late(115.0, 4096, TIMEOUT_S)
    assert not stall.is_late(159.9, 4096, TIMEOUT_S)
    assert stall.is_late(160.0, 4096, TIMEOUT_S)


def test_progress_at_a_check_restarts_the_clock() -> None:
    """A slow reader: a few bytes taken between two checks keep it going, however long in all."""
    stall = WriteStall(100.0, 4096)
    assert not stall.is_late(145.0, 4000, TIMEOUT_S)  # it read 96 bytes
    assert not stall.is_late(200.0, 4000, TIMEOUT_S)  # (55 s since the progress seen)
    assert stall.is_late(205.0, 4000, TIMEOUT_S)


def test_more_bytes_queued_is_no_progress() -> None:
    """A write while paused grows what is unsent: the peer took nothing for that."""
    stall = WriteStall(100.0, 4096)
    assert not stall.is_late(130.0, 8192, TIMEOUT_S)
    assert stall.is_late(160.0, 8192, TIMEOUT_S)
