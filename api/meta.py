"""GET /healthz (the process is up and serving; no dependency is checked) and the OpenAPI description."""

from __future__ import annotations

import functools
from pathlib import Path

from flask import Blueprint, Response, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


OPENAPI_PATH = Path(__file__).with_name("openapi.json")


@bp.get("/api/v1/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 description of this API (api/openapi.json, kept in the repository)."""
    return Response(_openapi_document(), mimetype="application/json")


@functools.cache
def _openapi_document() -> bytes:
    return OPENAPI_PATH.read_bytes()
