"""Go's duration syntax ("2s", "500ms", "1m30s"), which the original etcd-backup's config uses."""

from __future__ import annotations

import re

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration string ("2s", "500ms", "1m30s") into seconds."""
    pos, total = 0, 0.0
    if text == "0":
        return 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r} (use Go syntax such as 2s, 500ms, 1m30s)")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r} (use Go syntax such as 2s, 500ms, 1m30s)")
    return total


def format_duration(seconds: float) -> str:
    """Write `seconds` in Go's duration syntax, as parse_duration reads it back ("1m30s", "500ms")."""
    left = round(seconds * 1e9)
    parts = []
    for unit, nanoseconds in (("h", 3600 * 10**9), ("m", 60 * 10**9), ("s", 10**9), ("ms", 10**6),
                              ("us", 10**3), ("ns", 1)):
        count, left = divmod(left, nanoseconds)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0"
