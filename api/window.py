"""GET /api/v1/recovery-window: the revisions and times a point-in-time restore can reach (common.recovery_window)."""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, Response, jsonify

from api.state import state
from common.clock import redis_clock
from common.etcd_seen import etcd_seen_at
from common.metrics import read_watcher
from common.recovery_window import (
    STATS_KEY,
    RecordedGap,
    read_recorded_gaps,
    recovery_point,
    recovery_window,
)

bp = Blueprint("window", __name__)
logger = logging.getLogger(__name__)


@bp.get("/api/v1/recovery-window")
def show_recovery_window() -> Response:
    """The earliest and latest restorable revision and time, the gaps, and how current the watcher is."""
    current = state()
    connection = current.queue.connection
    now = redis_clock(connection)()
    recorded, watcher = _from_redis(connection)
    names = current.store.list_deltas()
    window = recovery_window(current.store.catalog(now), names, now, recorded)
    # From the store: Redis' current_at only moves it later where credible (common.recovery_window.recovery_point).
    point = recovery_point(window, watcher.get("current_at"), now, etcd_seen_at(connection)) \
        if names or "current_at" in watcher else None
    return jsonify({**window.to_json(), "watcher": {
        "current_at": None if point is None else point.time.isoformat(),
        "recovery_point_seconds": None if point is None else point.seconds,
        "last_revision": int(watcher["last_revision"]) if "last_revision" in watcher else None,
    }})


def _from_redis(connection: redis.Redis) -> tuple[list[RecordedGap], dict[str, float]]:
    """The gaps the watcher recorded and its counters; none while Redis does not answer (the window itself is
    read from the store: the gaps are then shown without the reason Redis would have told)."""
    try:
        return read_recorded_gaps(connection), read_watcher(connection, STATS_KEY)
    except redis.RedisError as exc:
        logger.warning("recovery window without the watcher's records: Redis: %s", exc)
        return [], {}

