"""Metrics that survive the process that made them: counters in Redis (written by workers and
schedulers, read by the API's /metrics), and everything else derived from backup-dir on each scrape.

Per-process prometheus counters would vanish with a gunicorn worker and never see what another
process did; these are read from where the facts are kept.
"""

from __future__ import annotations

import redis

OUTCOMES_KEY = "etcd-backup:metrics:outcomes"
"""Hash: outcome (success, failure, skipped) -> number of backups that ended so."""
DURATION_KEY = "etcd-backup:metrics:duration"
"""Hash: the duration histogram of successful backups: a count per bucket, plus "count" and "sum"."""
DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
"""Upper bounds, in seconds; the last bucket (+Inf) is "count"."""
OUTCOMES = ("success", "failure", "skipped")
DRILL_KEY = "etcd-backup:metrics:drill"
"""Hash: the last restore drill (time, backup, outcome, reason) and last_success (Unix times)."""


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


def read_outcomes(connection: redis.Redis) -> dict[str, int]:
    raw = connection.hgetall(OUTCOMES_KEY)
    counts = {outcome: 0 for outcome in OUTCOMES}
    counts.update({_text(key): int(value) for key, value in raw.items()})
    return counts


def read_durations(connection: redis.Redis) -> tuple[list[tuple[str, float]], float]:
    """Cumulative bucket counts (as prometheus wants them, +Inf last) and the sum."""
    raw = {_text(key): value for key, value in connection.hgetall(DURATION_KEY).items()}
    buckets = [(str(bound), float(raw.get(str(bound), 0))) for bound in DURATION_BUCKETS]
    buckets.append(("+Inf", float(raw.get("count", 0))))
    return buckets, float(raw.get("sum", 0))


def record_drill(connection: redis.Redis, time: float, backup: str, passed: bool, reason: str) -> None:
    fields: dict[str, str] = {"time": str(time), "backup": backup, "outcome": "passed" if passed else "failed",
                              "reason": reason}
    if passed:
        fields["last_success"] = str(time)
    connection.hset(DRILL_KEY, mapping=fields)  # type: ignore[arg-type]


def read_drill(connection: redis.Redis) -> dict[str, str]:
    return {_text(key): _text(value) for key, value in connection.hgetall(DRILL_KEY).items()}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
