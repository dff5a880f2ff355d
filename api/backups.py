"""The seed's three endpoints: list, download and create backups."""

from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify, send_file
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import BaseConverter

from api.jobs import wait_for_job
from api.state import state
from common import backups
from common.queue import enqueue_or_join

bp = Blueprint("backups", __name__, url_prefix="/api/v1/backup")

MAX_NAME_IN_MESSAGE = 80
"""A name longer than this is cut short in the 400 message."""


class AnyNameConverter(BaseConverter):
    """Match any rest of the path, slashes (even a leading one) included, so that every bad name
    is answered by the name check (400) rather than by routing."""

    regex = ".+"
    part_isolating = False


@bp.record_once
def _register_converter(setup: BlueprintSetupState) -> None:
    setup.app.url_map.converters["any_name"] = AnyNameConverter


@bp.get("")
def list_backups() -> Response:
    """List complete backups, oldest first."""
    return jsonify(backups.list_backups(state().config.backup_dir))


@bp.get("/<any_name:filename>")
def download_backup(filename: str) -> Response:
    """Send one backup file; HEAD, Range and conditional requests come with send_file."""
    if not backups.BACKUP_NAME.fullmatch(filename):
        shown = filename[:MAX_NAME_IN_MESSAGE] + ("..." if len(filename) > MAX_NAME_IN_MESSAGE else "")
        abort(400, description=f"invalid backup file name {shown!r}: expected snapshot-YYYYMMDD_HHMMSS.tar.gz")
    # A well-formed name with an impossible time (month 13) is never a listed backup: not found.
    path = backups.backup_path(state().config.backup_dir, filename) if backups.is_backup_name(filename) else None
    if path is None:
        abort(404, description=f"{filename} not found")
    return send_file(path, mimetype="application/gzip", as_attachment=True, download_name=filename,
                     conditional=True, etag=True)


@bp.post("")
def create_backup() -> tuple[Response, int]:
    """Take a backup (or join the one queued) and answer when it is done."""
    current = state()
    job = enqueue_or_join(current.queue)
    return wait_for_job(job, current.config.backup_timeout)
