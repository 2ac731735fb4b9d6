"""Output convention shared by every benchmark: one JSON object per line on stdout."""

from __future__ import annotations

import json
import statistics
import sys


def emit(bench: str, metric: str, value: float, unit: str, baseline: float | None = None) -> None:
    ratio = round(value / baseline, 4) if baseline else None
    line = {
        "bench": bench,
        "metric": metric,
        "value": round(value, 4),
        "unit": unit,
        "baseline": None if baseline is None else round(baseline, 4),
        "ratio": ratio,
    }
    print(json.dumps(line), flush=True)


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
