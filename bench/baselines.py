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
