"""The REST API: lists and serves backups from the store, enqueues backup jobs. Never imports `worker`."""

from __future__ import annotations

import logging
import threading

import redis
from flask import Flask

from api import auth, backups, edges, errors, jobs, meta, metrics, page, status, window
from api.server import WAITING_REQUESTS
from api.state import State
from common import queue
from common.config import Config
from common.storage import open_store

logger = logging.getLogger(__name__)


def create_app(config: Config, connection: redis.Redis | None = None) -> Flask:
    """Build the API for `config`, on `connection` or on a new connection to the configured Redis."""
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the original etcd-backup's key order
    # No redirects (they would answer HTML): "//" stays in a file name (and is refused), and a
    # trailing slash is accepted where it is harmless.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.extensions[State.KEY] = State(config, queue.job_queue(connection or queue.connect(config)),
                                      store=open_store(config),
                                      waiting_slots=threading.BoundedSemaphore(WAITING_REQUESTS))
    if config.open_to_the_network:
        logger.warning("%s (set api-token)", meta.auth_detail(config))
    errors.init_app(app)
    edges.init_app(app, config)  # first: a refused Host or origin learns nothing of its token
    auth.init_app(app)
    app.register_blueprint(meta.bp)
    app.register_blueprint(backups.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(status.bp)
    app.register_blueprint(page.bp)
    app.register_blueprint(window.bp)
    return app
