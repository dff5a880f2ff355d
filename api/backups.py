"""The original etcd-backup's three endpoints: list, download and create backups (and verify one)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

from flask import Blueprint, Response, abort, jsonify, request
from flask.blueprints import BlueprintSetupState
from werkzeug.http import parse_range_header
from werkzeug.routing import BaseConverter
from werkzeug.wsgi import wrap_file

from api.outcomes import wait_for_job
from api.state import state
from common import backups
from common.clock import redis_clock
from common.metadata import BackupMetadata
from common.queue import enqueue_or_join, enqueue_verify
from common.recovery_window import recovery_window
from common.storage import CatalogEntry, OpenedBackup

bp = Blueprint("backups", __name__, url_prefix="/api/v1/backup")

MAX_NAME_IN_MESSAGE = 80
"""A name longer than this is cut short in the 400 message."""


class AnyNameConverter(BaseConverter):
    """Match any rest of the path, slashes (even a leading one) included, so that every bad name
    is answered by the name check (400) rather than by routing."""

    regex = ".+(?<!/verify)"  # ".../<name>/verify" is the verify route's alone (its Allow lists only POST)
    part_isolating = False


@bp.record_once
def _register_converter(setup: BlueprintSetupState) -> None:
    setup.app.url_map.converters["any_name"] = AnyNameConverter


DETAIL_VALUES = {"true": True, "1": True, "false": False, "0": False}


@bp.get("")
def list_backups() -> Response:
    """List complete backups, oldest first: names (the original's answer), or with ?detail=true their metadata."""
    current = state()
    detail = request.args.get("detail", "false").lower()
    if detail not in DETAIL_VALUES:
        abort(400, description=f"detail must be true or false, got {detail[:20]!r}")
    # Backups named in the future come first: a client's "latest" (the last) is never one of them.
    now = redis_clock(current.queue.connection)()
    if not DETAIL_VALUES[detail]:
        return jsonify(current.store.list_backups(now))
    catalog = current.store.catalog(now)
    details = [_detail(entry) for entry in catalog]
    delta_names = current.store.list_deltas()
    if delta_names:  # continuous backup on: which deltas follow each backup (none were there: nothing changes)
        spans = {span.backup: span for span in recovery_window(catalog, delta_names, now).spans}
        for entry, shown in zip(catalog, details, strict=True):
            span = spans.get(entry.name)
            shown["deltas"] = span.deltas if span is not None else []
            shown["reaches_revision"] = span.end.revision if span is not None else None
    return jsonify(details)


def _media_type(name: str) -> str:
    """An encrypted backup is no gzip file to whoever cannot decrypt it: bytes, as age's own tools say."""
    return "application/octet-stream" if backups.is_encrypted(name) else "application/gzip"


def _detail(entry: CatalogEntry) -> dict[str, object]:
    if entry.metadata is not None:
        return entry.metadata.to_json()
    # Taken before metadata was recorded (or put there by hand): what the store tells.
    return {"filename": entry.name, "filesize": entry.stored.size}


@bp.get("/<any_name:filename>")
def download_backup(filename: str) -> Response:
    """Send one backup file, with HEAD, Range and conditional requests (as werkzeug's send_file would)."""
    _check_name(filename)
    store = state().store
    presigned = store.download_url(filename)
    if presigned is not None:  # s3.presign-downloads: the client fetches the object from the store itself
        response = Response(status=302, headers={"Location": presigned})
        response.cache_control.no_store = True
        return response
    metadata = store.read_metadata(filename)
    opened = store.open(filename)  # month 13 included: not found
    if opened is None:
        abort(404, description=f"{filename} not found")
    try:
        return _file_response(filename, opened, metadata)
    except BaseException:  # a 416 included: the response that would have closed the file is not sent
        opened.file.close()
        raise


def _file_response(filename: str, opened: OpenedBackup, metadata: BackupMetadata | None) -> Response:
    _ignore_unservable_range()
    response = Response(wrap_file(request.environ, opened.file), mimetype=_media_type(filename),
                        direct_passthrough=True)
    response.content_length = opened.stored.size
    response.last_modified = datetime.fromtimestamp(opened.stored.modified, UTC)
    response.cache_control.no_store = True  # every Secret of the cluster: kept by no browser cache or proxy
    response.set_etag(opened.stored.etag)
    response.headers.set("Content-Disposition", "attachment", filename=filename)
    _describe_content(response, metadata)
    response.make_conditional(request.environ, accept_ranges=True, complete_length=opened.stored.size)
    return response


def _describe_content(response: Response, metadata: BackupMetadata | None) -> None:
    if metadata is not None:  # as etcd-operator's backup sidecar does
        response.headers["X-Etcd-Revision"] = str(metadata.revision)
        response.headers["X-Etcd-Version"] = metadata.etcd_version
    if metadata is not None and metadata.archive_sha256 is not None:
        # The whole archive's digest, on a 206 too (RFC 9530's Repr-Digest is the representation's): a client
        # checks a resumed download once it is complete.
        response.headers["X-Backup-Sha256"] = metadata.archive_sha256
        digest = base64.b64encode(bytes.fromhex(metadata.archive_sha256)).decode()
        response.headers["Repr-Digest"] = f"sha-256=:{digest}:"


def _ignore_unservable_range() -> None:
    """Drop a Range header that asks for several ranges or that does not parse: RFC 9110 lets a server
    ignore it and send the whole file (200); make_conditional would answer 416. One range past the end of
    the file still gets 416, as the RFC wants."""
    value = request.headers.get("Range")
    parsed = parse_range_header(value) if value is not None else None
    if value is not None and (parsed is None or len(parsed.ranges) != 1):
        request.environ.pop("HTTP_RANGE")


def _check_name(filename: str) -> None:
    """400 for a name that is no backup name."""
    if not backups.BACKUP_NAME.fullmatch(filename):
        shown = filename[:MAX_NAME_IN_MESSAGE] + ("..." if len(filename) > MAX_NAME_IN_MESSAGE else "")
        abort(400, description=f"invalid backup file name {shown!r}: expected snapshot-YYYYMMDD_HHMMSS.tar.gz")


@bp.post("/<any_name:filename>/verify")
def verify_backup(filename: str) -> tuple[Response, int]:
    """Check a backup as `etcd-backup verify` does, on a worker, and answer with the result."""
    _check_name(filename)
    current = state()
    if current.store.stat(filename) is None:
        abort(404, description=f"{filename} not found")
    arrived = redis_clock(current.queue.connection)()
    # Joins a check of this backup that is queued already; a new one is refused beyond max-queued-jobs (429).
    job = enqueue_verify(current.queue, filename, current.config.max_queued_jobs)
    return wait_for_job(job, current.config.backup_timeout, arrived)


@bp.post("")
def create_backup() -> tuple[Response, int]:
    """Take a backup (or join the one queued) and answer when it is done."""
    current = state()
    # By the clock that names backups (a Redis writer cannot set it back): the answer's backup must have started
    # after this, whatever Redis says about the job (api.outcomes).
    arrived = redis_clock(current.queue.connection)()
    job = enqueue_or_join(current.queue)
    return wait_for_job(job, current.config.backup_timeout, arrived)
