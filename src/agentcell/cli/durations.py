"""Durations on the command line: `90`, `90s`, `15m`, `6h`, `2d` and combinations like `1h30m`, read
as whole seconds (`duration_option`, `duration_argument`) and shown back the same way
(`format_duration`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}
PATTERN = re.compile(r"(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?")
HOW_TO = "write seconds (90) or amounts with units d, h, m, s, largest first: 90s, 15m, 6h, 2d, 1h30m"


def parse_duration(text: str, *, max_s: int | None = None, zero_means: str | None = None) -> int:
    """Whole seconds in `text`; ValueError saying what to write instead when it is not a positive
    duration (of at most `max_s`), or zero where `zero_means` something (e.g. "off")."""
    compact = text.strip().lower().replace(" ", "")
    if compact.startswith("-"):
        raise ValueError(f"{text!r} is negative; a duration is positive: {HOW_TO}")
    if compact.isdigit():
        seconds = int(compact)
    else:
        match = PATTERN.fullmatch(compact)
        if not compact or match is None:
            raise ValueError(f"{text!r} is not a duration; {HOW_TO}")
        seconds = sum(int(amount) * UNIT_S[unit] for unit, amount in match.groupdict().items() if amount)
    if seconds == 0 and zero_means is None:
        raise ValueError(f"{text!r} is zero; a duration is at least 1s: {HOW_TO}")
    if max_s is not None and seconds > max_s:
        raise ValueError(f"{text!r} is more than {format_duration(max_s)}, the longest allowed")
    return seconds


def format_duration(seconds: float) -> str:
    """At most the two largest units, rounded down: 45s, 15m, 1h30m, 2d3h; `-` for none left."""
    left = int(seconds)
    if left <= 0:
        return "-"
    parts: list[str] = []
    for unit, size in UNIT_S.items():
        if left >= size and len(parts) < 2:
            parts.append(f"{left // size}{unit}")
            left %= size
        elif parts:
            break  # the next unit down would skip one: 1d0h5m reads worse than 1d
    return "".join(parts)


def duration_option(
    *names: str, help: str, max_s: int | None = None, zero_means: str | None = None
) -> Callable[[F], F]:
    """A click option read with `parse_duration`: whole seconds, None when absent; a bad value is a
    usage error (exit 2) naming the option and saying what to write instead. `zero_means`: 0 is
    allowed, and means that."""
    return click.option(
        *names, default=None, metavar="DURATION", callback=_to_seconds(max_s, zero_means), help=help
    )


def duration_argument(name: str, *, max_s: int | None = None) -> Callable[[F], F]:
    """A required click argument read with `parse_duration`, like `duration_option`. A negative
    value reaches the parser only in a command with `ignore_unknown_options` (else click takes
    `-5` for an unknown option)."""
    return click.argument(name, metavar="DURATION", callback=_to_seconds(max_s))


def _to_seconds(
    max_s: int | None, zero_means: str | None = None
) -> Callable[[click.Context, click.Parameter, str | None], int | None]:
    def to_seconds(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
        if value is None:
            return None
        try:
            return parse_duration(value, max_s=max_s, zero_means=zero_means)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param=param) from None

    return to_seconds
