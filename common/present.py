"""Durations, sizes and times as a person reads them: for `etcd-backup status`, `list` on a terminal and
the status page alike. Each takes what a JSON document holds and never raises on a value of another kind."""

from __future__ import annotations

from datetime import datetime


def duration(seconds: object) -> str:
    """42 s, 3 min, 2 h 5 min, 3 d 4 h."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds != seconds:
        return str(seconds)
    whole = int(min(seconds, 1e12))
    if whole < 60:
        return f"{max(whole, 0)} s"
    minutes, hours, days = whole // 60 % 60, whole // 3600 % 24, whole // 86400
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min"


def size(count: object) -> str:
    """512 bytes, 1.1 KiB, 98.0 MiB, 2.3 GiB."""
    if not isinstance(count, int | float) or isinstance(count, bool):
        return str(count)
    if count < 1024:
        return f"{count:.0f} bytes"
    units = ("KiB", "MiB", "GiB")
    scaled, unit = count / 1024, 0
    while scaled >= 1024 and unit < len(units) - 1:
        scaled, unit = scaled / 1024, unit + 1
    return f"{scaled:.1f} {units[unit]}"


def count(number: object, noun: str) -> str:
    """1 backup, 3 backups, 0 workers: `noun` takes an s unless there is one."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def when(iso: object) -> str:
    """An ISO 8601 time as `2026-11-27 06:31:03 UTC`; anything else as it is."""
    try:
        return datetime.fromisoformat(str(iso)).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return str(iso)
