"""The service at a glance, for the person on call: what `etcd-backup status`, GET /api/v1/status and the
status page show. Gathered where the facts are kept, as /metrics gathers them: the backups from the store,
the last failure, the drill and the queue from Redis (common.metrics), the next runs from the config, and the
recovery window (the recovery point, the revisions and times a point-in-time restore reaches, its gaps, the delta
watcher) as GET /api/v1/recovery-window reads it (common.recovery_window.read).

It is a JSON document (`gather`), so that `etcd-backup status --url` shows exactly what the service
sends, and `etcd-backup status --config` what the same function finds reading the store itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue, Worker
from rq.registry import FailedJobRegistry, StartedJobRegistry

from common import backups, recovery_window
from common.config import Config, next_fire
from common.metrics import read_drill, read_drill_notes, read_last_failure, read_outcomes, skip_wrong_type
from common.storage import AuthenticatedStore, BackupStore, CatalogEntry

EMBEDDED_REDIS = "embedded: the queue lives inside the service's process (ask the service: --url)"
"""What `status --config` says of Redis when the config has none to share."""


def newest_backup(catalog: list[CatalogEntry], now: datetime) -> dict[str, Any] | None:
    """The newest backup of the `catalog` (common.backups.newest): when it was complete, its size and revision."""
    entries = {entry.name: entry for entry in catalog}
    name = backups.newest(list(entries), now)
    if name is None:
        return None
    metadata = entries[name].metadata
    if metadata is not None:
        return {"filename": name, "completed": metadata.completed(now).isoformat(),
                "age_seconds": _age(metadata.completed(now), now), "filesize": metadata.filesize,
                "revision": metadata.revision, "etcd_version": metadata.etcd_version}
    # Taken before metadata was recorded (or put there by hand): its name's time, and what the store tells.
    named = backups.backup_time(name)
    assert named is not None  # listed, so a backup name
    return {"filename": name, "completed": named.isoformat(), "age_seconds": _age(named, now),
            "filesize": entries[name].stored.size, "revision": None, "etcd_version": None}


def gather(config: Config, store: BackupStore, queue: Queue | None, now: datetime) -> dict[str, Any]:
    """The status document at `now` (the clock that names backups); `queue` None: there is no Redis to read
    (the embedded queue, seen from outside the service)."""
    catalog = store.catalog(now)
    status: dict[str, Any] = {
        "time": now.isoformat(),
        "newest": newest_backup(catalog, now),
        "backups": {"count": len(catalog), "bytes": sum(entry.stored.size for entry in catalog),
                    **_authenticity(store, now)},
        "schedule": {"backup": _next_run(config.schedule, now), "drill": _next_run(config.drill, now)},
    }
    status.update(_from_redis(queue, now))
    status["recovery_window"] = recovery(config, store, queue.connection if queue is not None else None, now, catalog)
    newest, failure = status["newest"], status["last_failure"]
    # Failing: the last backup taken failed, so the newest is getting older (the on-call's first question).
    status["failing"] = failure is not None and (
        newest is None or datetime.fromisoformat(failure["time"]) > datetime.fromisoformat(newest["completed"]))
    return status


FUTURE_SLACK_SECONDS = 5.0
"""How far past `now` the recovery point's time may be before it is said to be in the future (a watcher's clock
ahead of the one that names backups, or a delta planted with a late name): its age then is unknown, not 0."""


def recovery(config: Config, store: BackupStore, connection: redis.Redis | None, now: datetime,
             catalog: list[CatalogEntry]) -> dict[str, Any]:
    """The recovery window part of the status: whether deltas are on (the config says so, or deltas are stored, or
    a watcher ran: the Procfile's `deltas` runs whatever the config says), the recovery point (the newest revision a
    restore reaches, and as of when the store held all etcd had), the earliest and latest restorable revision and
    time, the gaps, and the watcher (who holds its lease, its newest delta, and how far behind etcd's revision that
    is, by a worker's report from after that delta: common.etcd_seen)."""
    reading = recovery_window.read(store, connection, now, catalog, no_redis=EMBEDDED_REDIS)
    window, newest = reading.window.to_json(), reading.window.newest_delta
    on = config.deltas or bool(reading.deltas) or bool(reading.watcher) or bool(reading.running)
    seen = reading.etcd_seen() if on and newest is not None else None
    if seen is not None and newest is not None and seen[1] < newest.last_seen.timestamp():
        seen = None  # a report from before the newest delta tells nothing of how far behind etcd that one is
    return {
        "deltas_on": on,
        "deltas_stored": len(reading.deltas),
        "recovery_point": _point(reading, now),
        "earliest": window["earliest"],
        "latest": window["latest"],
        "gaps": window["gaps"],
        "watcher": {
            "running": reading.running,
            "lease_holder": reading.lease_holder,
            "redis": reading.redis,
            "last_stored": None if newest is None else {"revision": newest.last, "time": newest.last_seen.isoformat(),
                                                        "age_seconds": _age(newest.last_seen, now)},
            "etcd_revision": None if seen is None else seen[0],
            "etcd_seen": None if seen is None else datetime.fromtimestamp(seen[1], UTC).isoformat(),
            # As of that report (a worker's, every few seconds): etcd's revision past the newest delta's.
            "behind_revisions": None if seen is None or newest is None else max(0, seen[0] - newest.last),
        },
    }


def _point(reading: recovery_window.Reading, now: datetime) -> dict[str, Any] | None:
    latest = reading.window.latest
    if reading.point is None or latest is None:
        return None
    if latest.time.timestamp() > now.timestamp() + FUTURE_SLACK_SECONDS:
        return {"revision": latest.revision, "time": latest.time.isoformat(), "age_seconds": None}
    return {"revision": latest.revision, "time": reading.point.time.isoformat(),
            "age_seconds": round(reading.point.seconds, 3)}


def _authenticity(store: BackupStore, now: datetime) -> dict[str, Any]:
    """Whether the store is read signed (the verify key's fingerprint), and how many of its objects are not ours:
    planted, edited, or older than signing (common.storage.authenticated)."""
    if not isinstance(store, AuthenticatedStore):
        return {"signed_by": None}
    return {"signed_by": store.verifier.key.fingerprint, "not_ours": len(store.not_ours(now))}


def _from_redis(queue: Queue | None, now: datetime) -> dict[str, Any]:
    unknown: dict[str, Any] = {"last_failure": None, "drill": None, "queue": None, "outcomes": None}
    if queue is None:
        return {**unknown, "redis": EMBEDDED_REDIS}
    connection = queue.connection
    try:
        failure = read_last_failure(connection)
        drill = read_drill(connection)
        notes = read_drill_notes(connection)
        failed = FailedJobRegistry(queue=queue)
        started = StartedJobRegistry(queue=queue)
        depth = {
            "queued": skip_wrong_type(lambda: queue.count, queue.key),
            "running": skip_wrong_type(lambda: started.count, started.key),
            "failed_jobs": skip_wrong_type(lambda: failed.count, failed.key),
            "workers": Worker.count(queue=queue),
        }
        outcomes = read_outcomes(connection)
    except redis.RedisError as exc:
        return {**unknown, "redis": f"unreachable: {exc}"}
    failed_at = _time(failure[0]) if failure is not None else None
    drilled_at = _time(drill["time"]) if "time" in drill else None
    drill_passed_at = _time(drill["last_success"]) if "last_success" in drill else None
    return {
        "redis": "ok",
        "last_failure": None if failure is None or failed_at is None else {
            "time": failed_at.isoformat(), "age_seconds": _age(failed_at, now), "message": failure[1]},
        "drill": None if drilled_at is None else {
            "time": drilled_at.isoformat(), "age_seconds": _age(drilled_at, now),
            "passed": drill.get("passed") == 1.0, "backup": notes.get("backup"), "reason": notes.get("reason"),
            "last_success": drill_passed_at.isoformat() if drill_passed_at is not None else None},
        "queue": depth,
        "outcomes": outcomes,
    }


def _next_run(expression: str | None, now: datetime) -> dict[str, str] | None:
    return None if expression is None else {"cron": expression, "next": next_fire(expression, now).isoformat()}


def _time(unix: float) -> datetime | None:
    """The Unix time `unix` read from Redis; None if it is beyond what a date can be (not ours: left out)."""
    try:
        return datetime.fromtimestamp(unix, UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _age(then: datetime, now: datetime) -> float:
    return round((now - then).total_seconds(), 3)
