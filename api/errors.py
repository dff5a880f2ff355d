"""One JSON error shape, `{"message": ...}` (the original etcd-backup's), for every error the API answers."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from common.queue import RETRY_AFTER_SECONDS, QueueFull, UnreadableJob
from common.storage import StorageError

logger = logging.getLogger(__name__)


def error_response(status: int, message: str, **details: object) -> tuple[Response, int]:
    """The answer `status` with `message`, followed by what a client needs to act on it (`details`,
    e.g. /readyz's checks)."""
    return jsonify(message=message, **details), status


def init_app(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(UnreadableJob, _unreadable_job)
    app.register_error_handler(QueueFull, _queue_full)
    # Redis down must not take the API down: GETs read the directory and keep working.
    app.register_error_handler(redis.RedisError, _queue_unavailable)
    # The API's only file system work is reading backup-dir; a bucket says what failed in a StorageError.
    app.register_error_handler(OSError, _backup_dir_error)
    app.register_error_handler(StorageError, _storage_error)
    app.register_error_handler(Exception, _internal_error)


def _http_error(exc: HTTPException) -> tuple[Response, int]:
    response, status = error_response(exc.code or 500, exc.description or exc.name)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response, status


def _unreadable_job(exc: UnreadableJob) -> tuple[Response, int]:
    logger.error("%s: answered 500", exc, exc_info=exc.__cause__)  # the traceback tells which field
    return error_response(500, str(exc))


def _queue_full(exc: QueueFull) -> tuple[Response, int]:
    response, status = error_response(429, str(exc))
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response, status


def _queue_unavailable(exc: redis.RedisError) -> tuple[Response, int]:
    logger.error("job queue (Redis) unavailable: %s", exc)
    return error_response(503, f"job queue (Redis) unavailable: {exc}")


def _backup_dir_error(exc: OSError) -> tuple[Response, int]:
    logger.error("cannot read backup-dir: %s", exc)
    return error_response(500, f"cannot read backup-dir: {exc.strerror or exc}")


def _storage_error(exc: StorageError) -> tuple[Response, int]:
    logger.error("%s", exc)
    return error_response(500, str(exc))


def _internal_error(exc: Exception) -> tuple[Response, int]:
    logger.exception("unhandled error", exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}")
