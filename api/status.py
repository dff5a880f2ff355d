"""GET /api/v1/status: the service at a glance (common.status), for `etcd-backup status --url` and scripts."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api.meta import auth_detail
from api.state import state
from common import status
from common.clock import redis_clock

bp = Blueprint("status", __name__)


@bp.get("/api/v1/status")
def show_status() -> Response:
    current = state()
    now = redis_clock(current.queue.connection)()
    # What only the service knows of itself: how its API is protected (`status --config` reads no API).
    return jsonify({**status.gather(current.config, current.store, current.queue, now),
                    "api_auth": auth_detail(current.config)})
