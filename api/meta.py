"""Probes and self-description: GET /healthz (the process serves), GET /readyz (what a backup needs
is there: Redis, backup-dir, an etcd endpoint that a worker saw answer), GET /api/v1/openapi.json.

The API never connects to etcd: the workers report what they see in Redis (common.etcd_seen), so the API's
pods need no etcd credentials."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import redis
from flask import Blueprint, Response, jsonify

from api.auth import EVERY_RIGHT, RIGHTS, TOKEN_RIGHTS
from api.errors import error_response
from api.state import state
from common import etcd_seen
from common.config import Config

bp = Blueprint("meta", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Each check's outcome; unless all pass, 503 in the API's error shape, naming the failed checks."""
    current = state()
    checks = {
        "redis": _check(lambda: _ping(current.queue.connection)),
        "backup-dir": _check(current.store.check),
        "etcd": _check(lambda: etcd_seen.readiness(current.queue.connection)),
        # Never fails readiness (the original's default is open), but says so where operators look.
        "api-auth": {"ok": True, "detail": auth_detail(current.config)},
    }
    failed = [name for name, outcome in checks.items() if not outcome["ok"]]
    if failed:
        why = "; ".join(f"{name}: {checks[name]['error']}" for name in failed)
        return error_response(503, f"not ready: {why}", checks=checks)
    return jsonify(status="ready", checks=checks), 200


def auth_detail(config: Config) -> str:
    """How the API is protected, in one line: the tokens set and what each may do (api.auth), or a warning
    when it is open to the network."""
    if config.tokens:
        return "a token required: " + ", ".join(f"{name} ({_rights_of(name)})" for name in config.tokens)
    if config.open_to_the_network:
        return (f"WARNING: no api-token and listening on {config.listen}: anyone who can reach it can download "
                "every Secret in the cluster")
    return f"no api-token; listening on loopback only ({config.listen})"


def _rights_of(token: str) -> str:
    rights = TOKEN_RIGHTS[token]
    return "every right" if rights == EVERY_RIGHT else ", ".join(right for right in RIGHTS if right in rights)


def _check(probe: Callable[[], str | None]) -> dict[str, object]:
    try:
        detail = probe()
    except Exception as exc:  # noqa: BLE001 - a failed check is an answer, not an error
        return {"ok": False, "error": str(exc) or type(exc).__name__}
    return {"ok": True, **({"detail": detail} if detail else {})}


def _ping(connection: redis.Redis) -> None:
    connection.ping()


OPENAPI_PATH = Path(__file__).with_name("openapi.json")


@bp.get("/api/v1/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 description of this API (api/openapi.json, kept in the repository)."""
    return Response(_openapi_document(), mimetype="application/json")


@functools.cache
def _openapi_document() -> bytes:
    return OPENAPI_PATH.read_bytes()
