"""Parsing human durations (``90s``, ``45m``, ``12h``, ``30d``, ``2w``) and sizes (``20GB``).

Thin wrappers over humanfriendly (a kept library, rather than our own regexes) that turn its
exceptions into messages for people. Imported lazily: ``llmbatch --help`` should not pay for it.
"""

from __future__ import annotations

from llmbatch.errors import UsageError

__all__ = ["format_ms", "format_size", "parse_duration", "parse_size"]


def parse_duration(text: str, *, option: str) -> float:
    """Seconds in ``text``; a bare number is seconds."""
    import humanfriendly

    try:
        seconds = float(humanfriendly.parse_timespan(text.strip()))
    except (humanfriendly.InvalidTimespan, ValueError):
        raise UsageError(
            f"{option}: invalid duration {text!r}; use a number and a unit, like 90s, 45m, 12h, 30d or 2w"
        ) from None
    if seconds <= 0:
        raise UsageError(f"{option}: the duration must be positive, got {text!r}")
    return seconds


def parse_size(text: str, *, option: str) -> int:
    """Bytes in ``text``: ``20GB`` (decimal), ``16GiB`` (binary) or a plain number of bytes."""
    import humanfriendly

    try:
        size = int(humanfriendly.parse_size(text.strip(), binary=False))
    except (humanfriendly.InvalidSize, ValueError):
        raise UsageError(f"{option}: invalid size {text!r}; use a number and a unit, like 500MB or 20GB") from None
    if size <= 0:
        raise UsageError(f"{option}: the size must be positive, got {text!r}")
    return size


def format_size(n: int) -> str:
    import humanfriendly

    return str(humanfriendly.format_size(n, binary=False))


def format_ms(ms: float | None) -> str:
    """A latency for people: ``850 ms``, ``4.2 ms``, ``2.35 s``; ``--`` when unknown."""
    if ms is None:
        return "--"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
