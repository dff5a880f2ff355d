"""Probes and self-description: GET /healthz (the process serves), GET /readyz (what a backup needs
is there: Redis, backup-dir, an etcd endpoint), GET /api/v1/openapi.json."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import redis
from flask import Blueprint, Response, current_app, jsonify
from flask.blueprints import BlueprintSetupState

from api.auth import EVERY_RIGHT, RIGHTS, TOKEN_RIGHTS
from api.errors import error_response
from api.state import State, state
from common import etcd
from common.config import Config, EtcdConfig

bp = Blueprint("meta", __name__)

ETCD_CHECK_MAX_AGE = 5.0
"""Seconds /readyz serves its last etcd check before it asks etcd again, on a thread of its own."""


class EtcdCheck:
    """The etcd readiness check, made when the API starts and again, on a thread of its own, once
    ETCD_CHECK_MAX_AGE old: /readyz answers with the last outcome and never waits on etcd (but for
    the very first check, if a probe comes before it is done).

    Connecting to etcd and proving a member current takes a few ms, but in a process that streams a
    snapshot and serves a hundred waiting POSTs it took 0.7-0.9 s (measured: the same check from
    another process, 6 ms): a probe must not wait on that.
    """

    KEY: ClassVar[str] = "etcd_backup_etcd_check"

    def __init__(self, config: EtcdConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._first = threading.Event()
        self._last: dict[str, object] = {}
        self._checked_at = 0.0
        self._refreshing = True
        threading.Thread(target=self._refresh, name="readyz-etcd", daemon=True).start()

    def outcome(self) -> dict[str, object]:
        self._first.wait()
        with self._lock:
            if time.monotonic() - self._checked_at > ETCD_CHECK_MAX_AGE and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, name="readyz-etcd", daemon=True).start()
            return self._last

    def _refresh(self) -> None:
        outcome = _check(lambda: _answering_endpoint(self.config))
        with self._lock:
            self._last, self._checked_at, self._refreshing = outcome, time.monotonic(), False
        self._first.set()


@bp.record_once
def _install_etcd_check(setup: BlueprintSetupState) -> None:
    setup.app.extensions[EtcdCheck.KEY] = EtcdCheck(setup.app.extensions[State.KEY].config.etcd)


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
        "etcd": current_app.extensions[EtcdCheck.KEY].outcome(),
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
