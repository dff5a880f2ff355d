"""GET /api/v1/recovery-window: the revisions and times a point-in-time restore can reach (common.recovery_window,
read as `etcd-backup status` and the status page read it: common.status)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.state import state
from common import recovery_window
from common.clock import redis_clock

bp = Blueprint("window", __name__)


@bp.get("/api/v1/recovery-window")
def show_recovery_window() -> Response:
    """The earliest and latest restorable revision and time, the gaps, and how current the watcher is."""
    current = state()
    connection = current.queue.connection
    now = redis_clock(connection)()
    reading = recovery_window.read(current.store, connection, now)
    point, watcher = reading.point, reading.watcher
    return jsonify({**reading.window.to_json(), "watcher": {
        "current_at": None if point is None else point.time.isoformat(),
        "recovery_point_seconds": None if point is None else point.seconds,
        "last_revision": int(watcher["last_revision"]) if "last_revision" in watcher else None,
    }})
