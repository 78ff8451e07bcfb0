"""Human durations ("5s", "500ms", "7d") to timedelta and back."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {
    "ms": 0.001, "msec": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_duration(value: object) -> timedelta:
    """Accept a timedelta, a number of seconds, or text such as "5s", "1h30m", "7 days"."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '5s', got a boolean")
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    text = str(value).strip()
    if not text:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    while pos < len(text):
        match = _PART.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"invalid duration {text!r}; use e.g. '500ms', '5s', '2min', '7d'")
        unit = match.group(2).lower() or "s"
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {match.group(2)!r} in duration {text!r}")
        total += float(match.group(1)) * _UNITS[unit]
        pos = match.end()
    return timedelta(seconds=total)


def parse_optional_duration(value: object) -> timedelta | None:
    """Like parse_duration, but None, "", "none", "off" and 0 all mean "no limit" (None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none", "off"}):
        return None
    duration = parse_duration(value)
    return None if duration == timedelta(0) else duration


def format_duration(value: timedelta | None) -> str:
    if value is None:
        return "none"
    ms = round(value.total_seconds() * 1000)
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def postgres_ms(value: timedelta | None) -> str:
    """A value for SET lock_timeout / statement_timeout: milliseconds, 0 meaning no limit."""
    if value is None or value <= timedelta(0):
        return "0"
    return str(max(1, round(value.total_seconds() * 1000)))
