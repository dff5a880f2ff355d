"""Metrics that survive the process that made them: counters in Redis (written by workers and
schedulers, read by the API's /metrics), and everything else derived from backup-dir on each scrape.

Per-process prometheus counters would vanish with a gunicorn worker and never see what another
process did; these are read from where the facts are kept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TypeVar

import redis

from common.redis_tools import text

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

OUTCOMES_KEY = "etcd-backup:metrics:outcomes"
"""Hash: outcome (success, failure, skipped) -> number of backups that ended so."""
DURATION_KEY = "etcd-backup:metrics:duration"
"""Hash: the duration histogram of successful backups: a count per bucket, plus "count" and "sum"."""
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Upper bounds, in seconds; the last bucket (+Inf) is "count"."""
OUTCOMES = ("success", "failure", "skipped")
DRILL_KEY = "etcd-backup:metrics:drill"
"""Hash: the last restore drill (time, backup, outcome, reason) and last_success (Unix times)."""
LAST_FAILURE_KEY = "etcd-backup:metrics:last-failure"
"""Hash: the last backup that failed: its time (Unix) and message (what a POST's 500 said after the colon)."""
MAX_MESSAGE_CHARACTERS = 1000
"""A failure's message is kept to this many characters: an etcd error can quote a whole response."""


def record_outcome(connection: redis.Redis, outcome: str, duration: float | None = None) -> None:
    """Count one backup that ended with `outcome`; a success also goes into the duration histogram."""
    assert outcome in OUTCOMES, outcome
    with connection.pipeline() as pipe:
        pipe.hincrby(OUTCOMES_KEY, outcome, 1)
        if duration is not None:
            for bound in DURATION_BUCKETS:
                if duration <= bound:
                    pipe.hincrby(DURATION_KEY, str(bound), 1)
            pipe.hincrby(DURATION_KEY, "count", 1)
            pipe.hincrbyfloat(DURATION_KEY, "sum", duration)
        pipe.execute()


def record_failure(connection: redis.Redis, time: float, message: str) -> None:
    """Count one failed backup and keep it as the last failure, for `etcd-backup status` and the status page."""
    with connection.pipeline() as pipe:
        pipe.hincrby(OUTCOMES_KEY, "failure", 1)
        pipe.hset(LAST_FAILURE_KEY, mapping={"time": str(time), "message": message[:MAX_MESSAGE_CHARACTERS]})
        pipe.execute()


# The readers below never raise on what they find in Redis: whoever can write there (or a bug) may leave
# a value that is no number, and a bad value must cost its own metric, never the whole /metrics scrape.


def read_outcomes(connection: redis.Redis) -> dict[str, int]:
    """Backups by outcome; an outcome whose count is unreadable is left out (and logged)."""
    raw = _read_hash(connection, OUTCOMES_KEY)
    if raw is None:
        return {}
    counts = {outcome: 0 for outcome in OUTCOMES}
    for field, value in raw.items():
        if field not in OUTCOMES:  # a label made up in Redis would be a new time series on every scrape
            _skipped(OUTCOMES_KEY, field, value, "not an outcome")
            continue
        count = _number(OUTCOMES_KEY, field, value, int)
        if count is None:
            del counts[field]
        else:
            counts[field] = int(count)
    return counts


def read_durations(connection: redis.Redis) -> tuple[list[tuple[str, float]], float] | None:
    """Cumulative bucket counts (as prometheus wants them, +Inf last) and the sum; None if one is unreadable."""
    raw = _read_hash(connection, DURATION_KEY)
    if raw is None:
        return None
    fields = [str(bound) for bound in DURATION_BUCKETS] + ["count", "sum"]
    # Absent is zero (nothing recorded yet); one unreadable value makes the whole histogram untrustworthy.
    values = [_number(DURATION_KEY, field, raw[field], float) if field in raw else 0.0 for field in fields]
    numbers = [value for value in values if value is not None]
    if len(numbers) < len(values):
        return None
    buckets = [(str(bound), count) for bound, count in zip(DURATION_BUCKETS, numbers, strict=False)]
    buckets.append(("+Inf", numbers[-2]))
    return buckets, numbers[-1]


def record_drill(connection: redis.Redis, time: float, backup: str, passed: bool, reason: str) -> None:
    fields: dict[str, str] = {"time": str(time), "backup": backup, "outcome": "passed" if passed else "failed",
                              "reason": reason}
    if passed:
        fields["last_success"] = str(time)
    connection.hset(DRILL_KEY, mapping=fields)  # type: ignore[arg-type]


def read_drill(connection: redis.Redis) -> dict[str, float]:
    """The last drill's "time", "passed" (1 or 0) and the "last_success" time, each only if it is readable."""
    raw = _read_hash(connection, DRILL_KEY) or {}
    drill: dict[str, float] = {}
    for field in ("time", "last_success"):
        if field in raw and (value := _number(DRILL_KEY, field, raw[field], float)) is not None:
            drill[field] = value
    if "outcome" in raw:
        if raw["outcome"] in ("passed", "failed"):
            drill["passed"] = 1.0 if raw["outcome"] == "passed" else 0.0
        else:
            _skipped(DRILL_KEY, "outcome", raw["outcome"], "neither passed nor failed")
    return drill


WATCHER_FIELDS = {"events": int, "bytes": int, "deltas": int, "gaps": int, "last_revision": int, "current_at": float}
"""The delta watcher's hash (common.recovery_window.STATS_KEY): counts, the last stored revision, and the Unix
time as of which every revision etcd had is stored (the recovery point's start)."""


def read_watcher(connection: redis.Redis, key: str) -> dict[str, float]:
    """The delta watcher's counters and times at `key`, each only if it is readable."""
    raw = _read_hash(connection, key) or {}
    watcher: dict[str, float] = {}
    for field, kind in WATCHER_FIELDS.items():
        if field in raw and (value := _number(key, field, raw[field], kind)) is not None:
            watcher[field] = value
    return watcher


def read_drill_notes(connection: redis.Redis) -> dict[str, str]:
    """The last drill's "backup" and "reason", as text, each only if it is there (read_drill has the numbers)."""
    raw = _read_hash(connection, DRILL_KEY) or {}
    return {field: raw[field] for field in ("backup", "reason") if field in raw}


def read_last_failure(connection: redis.Redis) -> tuple[float, str] | None:
    """When the last backup failed (Unix time) and its message; None if none failed or the record is unreadable."""
    raw = _read_hash(connection, LAST_FAILURE_KEY) or {}
    if "time" not in raw:
        return None
    time = _number(LAST_FAILURE_KEY, "time", raw["time"], float)
    return None if time is None else (time, raw.get("message", ""))


def skip_wrong_type(read: Callable[[], _T], key: str) -> _T | None:
    """Run `read` of the Redis key `key`; None (logged) if the key holds another type than `read` expects."""
    try:
        return read()
    except redis.ResponseError as exc:  # WRONGTYPE; an unreachable Redis raises ConnectionError instead
        logger.warning("/metrics skipped %s: %s", key, exc)
        return None


def _read_hash(connection: redis.Redis, key: str) -> dict[str, str] | None:
    """The hash at `key`; None if `key` is not a hash. A field whose name is not UTF-8 is skipped."""
    raw = skip_wrong_type(lambda: connection.hgetall(key), key)
    if raw is None:
        return None
    fields = {}
    for name, value in raw.items():
        # A value that is not UTF-8 is no number either: replaced, it fails to parse and is skipped there.
        value_text = value.decode(errors="replace") if isinstance(value, bytes) else value
        try:
            fields[text(name)] = value_text
        except UnicodeDecodeError:
            _skipped(key, repr(name), value_text, "a field name that is not UTF-8")
    return fields


def _number(key: str, field: str, value: str, kind: Callable[[str], float]) -> float | None:
    """`value` as an int or a float (`kind`): finite and not negative, as every count and time here; else None."""
    try:
        number: float | None = kind(value)
        # An int too large for a float (a 400-digit count) makes isfinite raise OverflowError: no count of ours.
        finite = number is not None and math.isfinite(number)
    except (ValueError, OverflowError):
        number, finite = None, False
    if number is None or not finite or number < 0:
        _skipped(key, field, value, "not a finite number of 0 or more")
        return None
    return number


def _skipped(key: str, field: str, value: str, why: str) -> None:
    logger.warning("/metrics skipped %s %s = %r: %s", key, field, value[:50], why)
