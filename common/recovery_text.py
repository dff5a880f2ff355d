"""The recovery window of the status document (common.status.recovery) as a person reads it: the lines that
`etcd-backup status` prints and the status page shows, phrased here once for both. Each takes what the JSON
document holds, which `status --url` gets from whatever answers there: a value of another kind is shown as it
is (common.present), and the caller escapes the text (one line on a terminal, HTML on the page)."""

from __future__ import annotations

from typing import Any

from common import present

OK, WARN, BAD = "ok", "warn", "bad"
"""How a line reads at a glance: green, yellow, red on a terminal; the page's classes of the same names."""
MAX_GAPS_SHOWN = 3
"""Gaps named on the status line; GET /api/v1/recovery-window lists them all."""
OLDER_SERVICE = "unknown: the service does not say (older than this command)"
DELTAS_OFF = ("off: full backups only, no point-in-time recovery (`deltas: true`, or the `deltas` process, "
              "turns it on)")


def lines(recovery: object) -> list[tuple[str, str, str | None]]:
    """(label, text, tone) for each line: one line with deltas off (or from a service that has no window), else
    the recovery point, the window, the gaps and the watcher."""
    if not isinstance(recovery, dict):
        return [("recovery window", OLDER_SERVICE, WARN)]
    if not recovery.get("deltas_on"):
        return [("deltas", DELTAS_OFF, None)]
    gaps = recovery["gaps"]
    return [("recovery point", *_point(recovery)),
            ("recovery window", _span(recovery["earliest"], recovery["latest"]), None),
            ("gaps", _gaps(gaps), WARN if gaps else OK),
            ("delta watcher", *_watcher(recovery["watcher"]))]


def no_point_reason(recovery: dict[str, Any]) -> str:
    """Why there is no recovery point while deltas are on."""
    return "no delta stored yet" if not recovery.get("deltas_stored") else "no full backup the deltas follow"


def _point(recovery: dict[str, Any]) -> tuple[str, str]:
    point = recovery["recovery_point"]
    if point is None:
        return f"none: {no_point_reason(recovery)}", BAD
    if point["age_seconds"] is None:
        return (f"revision {point['revision']}, named {present.when(point['time'])}: in the future (a clock ahead, "
                "or a planted delta)"), BAD
    age = present.duration(point["age_seconds"])
    return f"revision {point['revision']}, {age} ago ({present.when(point['time'])})", OK


def _span(earliest: dict[str, Any] | None, latest: dict[str, Any] | None) -> str:
    if earliest is None or latest is None:
        return "none: no full backup to start from"
    return (f"revision {earliest['revision']} ({present.when(earliest['time'])}) "
            f"to {latest['revision']} ({present.when(latest['time'])})")


def _gaps(gaps: list[dict[str, Any]]) -> str:
    if not gaps:
        return "none"
    named = [f"revisions {gap['from']} to {gap['to']}: {gap['reason']}" for gap in gaps[:MAX_GAPS_SHOWN]]
    if len(gaps) > MAX_GAPS_SHOWN:
        named.append(f"and {len(gaps) - MAX_GAPS_SHOWN} more (GET /api/v1/recovery-window lists them all)")
    return "; ".join(named)


def _watcher(watcher: dict[str, Any]) -> tuple[str, str]:
    running = watcher["running"]
    if running is None:
        text, tone = f"unknown (Redis: {watcher.get('redis')})", WARN
    elif running:
        text, tone = f"running, lease held by {watcher['lease_holder']}", OK
    else:
        text, tone = "not running (no watcher holds the lease)", BAD
    last = watcher["last_stored"]
    if last is None:
        text += ", nothing stored yet"
    else:
        age = last["age_seconds"]
        ago = f"named {present.when(last['time'])}: in the future" if isinstance(age, int | float) and age < 0 \
            else f"{present.duration(age)} ago"
        text += f", last stored revision {last['revision']} ({ago})"
    if watcher.get("behind_revisions") is not None:
        text += (f", {present.count(watcher['behind_revisions'], 'revision')} behind etcd (revision "
                 f"{watcher['etcd_revision']}, reported {present.when(watcher['etcd_seen'])})")
    return text, tone
