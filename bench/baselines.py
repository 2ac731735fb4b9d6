"""Baselines measured in the same run: a raw namespace spawn, a plain subprocess."""

from __future__ import annotations

import subprocess
import time

UNSHARE = ["unshare", "--fork", "--pid", "--mount", "--net", "--uts", "--ipc", "--mount-proc", "true"]


def time_ms(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True)
    return (time.perf_counter() - started) * 1000


def samples_ms(argv: list[str], runs: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        time_ms(argv)
    return [time_ms(argv) for _ in range(runs)]


def burst_ms(argv: list[str], count: int) -> list[float]:
    """`count` processes started at once: each one's time from the start of the burst to its
    exit, in ms (the floor for `count` sandboxes created together on this machine)."""
    started = time.perf_counter()
    procs = [subprocess.Popen(argv) for _ in range(count)]
    done = []
    for proc in procs:  # waiting in start order: a later one's exit is seen no earlier than it was
        if proc.wait() != 0:
            raise RuntimeError(f"{argv[0]} exited with {proc.returncode}")
        done.append((time.perf_counter() - started) * 1000)
    return done
