"""What benchmarks read from /proc about the processes they start: CPU time and children."""

from __future__ import annotations

import os
import time
from pathlib import Path

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int, children: bool = False) -> float:
    """utime + stime (+ its reaped children's) of a process, in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks * TICK_MS


def children(pid: int) -> list[int]:
    """The process's children (of all its threads)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return [int(child) for task in tasks for child in (task / "children").read_text().split()]


def node_busy_ms() -> float:
    """CPU time the whole machine has spent busy (every CPU, kernel threads included; not idle or
    waiting for I/O), in ms."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) * TICK_MS


def own_cpu_ms() -> float:
    """CPU time of this process (every thread), in ms."""
    return time.process_time() * 1000
