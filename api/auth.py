"""The optional API token: with `api-token` set, every request but /healthz needs it as a Bearer token."""

from __future__ import annotations

import hmac

from flask import Flask, Response, request

from api.errors import error_response
from api.state import state

OPEN_PATHS = frozenset({"/healthz"})
"""Answered without the token: a liveness probe carries no credentials."""


def init_app(app: Flask) -> None:
    app.before_request(_require_token)


def _require_token() -> tuple[Response, int] | None:
    token = state().config.api_token
    if token is None or request.path in OPEN_PATHS:
        return None
    scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
    # compare_digest: the time taken does not tell how much of a guessed token was right.
    if scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token.encode()):
        return None
    response, status = error_response(401, "missing or wrong API token: send 'Authorization: Bearer <api-token>'")
    response.headers["WWW-Authenticate"] = 'Bearer realm="etcd-backup"'
    return response, status
