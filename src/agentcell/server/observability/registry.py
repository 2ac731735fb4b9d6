"""A small Prometheus registry: counters and histograms whose children are plain number updates,
gauges read from live state when scraped, and the text exposition format (version 0.0.4).

Hot paths hold a child (one label set, resolved once) and call `inc`/`observe`: no lock (the
server is one event loop), no label formatting, no allocation beyond Python's own float boxing.
Label strings are escaped once, when a child is made.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""Default histogram bounds, in seconds: sub-millisecond warm requests to half-minute cold starts."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelValues = tuple[str, ...]
GaugeReader = Callable[[], Iterable[tuple[LabelValues, float]]]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


class Counter:
    """One counter child: a monotonically increasing number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Histogram:
    """One histogram child: per-bucket counts (not cumulative; summed at scrape), sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class _Family:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def lines(self) -> list[str]:
        raise NotImplementedError


class CounterFamily(_Family):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._children: dict[LabelValues, tuple[str, Counter]] = {}

    def labels(self, *values: str) -> Counter:
        """The child for `values` (made on first use; hot paths keep the child they get)."""
        found = self._children.get(values)
        if found is None:
            found = self._children[values] = (_labels(self.labelnames, values), Counter())
        return found[1]

    def lines(self) -> list[str]:
        return [f"{self.name}{text} {_number(c.value)}" for text, c in self._children.values()]


class HistogramFamily(_Family):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        bounds: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.bounds = tuple(sorted(bounds))
        self._children: dict[LabelValues, tuple[LabelValues, Histogram]] = {}

    def labels(self, *values: str) -> Histogram:
        found = self._children.get(values)
        if found is None:
            found = self._children[values] = (values, Histogram(self.bounds))
        return found[1]

    def remove(self, *values: str) -> None:
        """Drop one child's series (its label values went away, e.g. a deleted function)."""
        self._children.pop(values, None)

    def lines(self) -> list[str]:
        out: list[str] = []
        for values, child in self._children.values():
            cumulative = 0
            for bound, count in zip((*child.bounds, math.inf), child.counts, strict=True):
                cumulative += count
                le = _labels(self.labelnames, values, f'le="{_number(bound)}"')
                out.append(f"{self.name}_bucket{le} {cumulative}")
            text = _labels(self.labelnames, values)
            out.append(f"{self.name}_sum{text} {_number(child.sum)}")
            out.append(f"{self.name}_count{text} {child.count}")
        return out


class GaugeFamily(_Family):
    """A gauge computed when scraped: `read()` yields (label values, value) from live state."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str], read: GaugeReader) -> None:
        super().__init__(name, help_text, labelnames)
        self._read = read

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(self.labelnames, v)} {_number(x)}" for v, x in self._read()]


class Registry:
    """Every family the server exports, in registration order."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def add(self, family: _Family) -> None:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} is registered twice")
        self._families[family.name] = family

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> CounterFamily:
        family = CounterFamily(name, help_text, labelnames)
        self.add(family)
        return family

    def histogram(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str] = (),
        bounds: Sequence[float] = LATENCY_BUCKETS_S,
    ) -> HistogramFamily:
        family = HistogramFamily(name, help_text, labelnames, bounds)
        self.add(family)
        return family

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str], read: GaugeReader) -> GaugeFamily:
        family = GaugeFamily(name, help_text, labelnames, read)
        self.add(family)
        return family

    def exposition(self) -> str:
        """The Prometheus text format of every family (a family with no samples keeps its header)."""
        out: list[str] = []
        for family in self._families.values():
            out += family.header()
            out += family.lines()
        return "\n".join(out) + "\n"
