"""Probes and self-description: GET /healthz (the process serves), GET /readyz (what a backup needs
is there: Redis, backup-dir, an etcd endpoint), GET /api/v1/openapi.json."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import redis
from flask import Blueprint, Response, jsonify

from api.state import state
from common import etcd
from common.config import Config, EtcdConfig

bp = Blueprint("meta", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Each check's outcome; 503 naming the failed checks unless all pass."""
    current = state()
    checks = {
        "redis": _check(lambda: _ping(current.queue.connection)),
        "backup-dir": _check(lambda: _readable_dir(current.config.backup_dir)),
        "etcd": _check(lambda: _answering_endpoint(current.config.etcd)),
        # Never fails readiness (the original's default is open), but says so where operators look.
        "api-auth": {"ok": True, "detail": auth_detail(current.config)},
    }
    failed = [name for name, outcome in checks.items() if not outcome["ok"]]
    status = 503 if failed else 200
    body: dict[str, object] = {"status": "ready" if not failed else "not ready", "checks": checks}
    if failed:
        body["message"] = "not ready: " + "; ".join(f"{name}: {checks[name]['error']}" for name in failed)
    return jsonify(body), status


def auth_detail(config: Config) -> str:
    """How the API is protected, in one line (a warning when it is open to the network)."""
    if config.api_token is not None:
        return "api-token required"
    if config.open_to_the_network:
        return (f"WARNING: no api-token and listening on {config.listen}: anyone who can reach it can download "
                "every Secret in the cluster")
    return f"no api-token; listening on loopback only ({config.listen})"


def _check(probe: Callable[[], str | None]) -> dict[str, object]:
    try:
        detail = probe()
    except Exception as exc:  # noqa: BLE001 - a failed check is an answer, not an error
        return {"ok": False, "error": str(exc) or type(exc).__name__}
    return {"ok": True, **({"detail": detail} if detail else {})}


def _ping(connection: redis.Redis) -> None:
    connection.ping()


def _readable_dir(path: Path) -> None:
    if not os.access(path, os.R_OK | os.X_OK) or not path.is_dir():
        raise OSError(f"{path} is not a readable directory")
    os.listdir(path)


def _answering_endpoint(config: EtcdConfig) -> str:
    try:
        with etcd.connect(config) as connection:
            return f"{connection.endpoint} answers (etcd {connection.status.version})"
    except etcd.EtcdUnavailable as exc:
        raise RuntimeError(str(exc)) from None


OPENAPI_PATH = Path(__file__).with_name("openapi.json")


@bp.get("/api/v1/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 description of this API (api/openapi.json, kept in the repository)."""
    return Response(_openapi_document(), mimetype="application/json")


@functools.cache
def _openapi_document() -> bytes:
    return OPENAPI_PATH.read_bytes()
