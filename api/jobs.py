"""Job outcomes: waiting for a job, turning it into its JSON answer (the seed's, for a backup),
GET /api/v1/jobs/<id>."""

from __future__ import annotations

import functools
import logging
import math
import re
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from flask import Blueprint, Response, abort, jsonify, url_for
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result

from api.errors import error_response
from api.state import state
from common import queue
from common.queue import (
    BACKUP_JOB,
    DRILL_JOB,
    ERROR_META,
    HEARTBEAT_TTL,
    UNCHECKED_META,
    VERIFY_JOB,
    UnreadableJob,
    heartbeat_key,
    read_job,
)

bp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs")
logger = logging.getLogger(__name__)

FAILED_MESSAGE = "failed to save an etcd backup"
SUCCESS_MESSAGE = "backup successfully"
VERIFIED_MESSAGE = "backup verified"
NOT_VERIFIED_MESSAGE = "backup verification failed"
_ANSWERS: dict[str, tuple[str, str, int]] = {
    # job function: (success message, failure message, failure status)
    BACKUP_JOB: (SUCCESS_MESSAGE, FAILED_MESSAGE, 500),
    # A check that ran and found the backup bad is no server error.
    VERIFY_JOB: (VERIFIED_MESSAGE, NOT_VERIFIED_MESSAGE, 422),
    # A drill that ran reports passed or not in its body; "failed" is a drill that could not run.
    DRILL_JOB: ("drill done", "drill failed", 500),
}
WAIT_STEP = 2
"""Seconds of one blocking wait for a result; between waits the job's state is looked at again."""
JOB_ID = re.compile(r"[0-9a-f]{32}")
"""The form of every job id (common.queue.new_job_id), whatever its kind."""
KINDS = {BACKUP_JOB: "backup", VERIFY_JOB: "verify", DRILL_JOB: "drill"}
"""The word that names each kind of job in the answers about it ("verify queued")."""
LOST = "lost"
"""The status GET /api/v1/jobs/<id> reports for a started job whose worker stopped answering."""
LOST_CAUSE = ("the worker taking the backup stopped answering before it reported a result "
              "(killed, crashed or cut off from Redis); no partial backup is listed")

_UNFINISHED_MESSAGES = {
    JobStatus.QUEUED: "{kind} queued",
    JobStatus.STARTED: "{kind} in progress",
}
_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, OverflowError, zlib.error, DeserializationError,
               InvalidJobOperation, NoSuchJobError)
"""What RQ's parsing of a job's hash and result, and this module's reading of them, raise on a value that
neither RQ nor a worker wrote (JSON that is no mapping, a date that is no date, ...); NoSuchJobError is
TrustedJob's answer to such a hash on a refresh."""
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _unreadable_is_one_answer(answer: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn a bad value in the Redis state of the job being answered about into UnreadableJob: one 500 for
    that job (handled below), never a crash of anything else."""

    @functools.wraps(answer)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return answer(*args, **kwargs)
        except _UNREADABLE as exc:
            job_id = kwargs.get("job_id") or next(arg.id for arg in args if isinstance(arg, Job))
            raise UnreadableJob(str(job_id), exc) from exc

    return guarded


@bp.app_errorhandler(UnreadableJob)
def _unreadable_job(exc: UnreadableJob) -> tuple[Response, int]:
    logger.error("%s: answered 500", exc, exc_info=exc.__cause__)  # the traceback tells which field
    return error_response(500, str(exc))


@bp.get("/<job_id>")
@_unreadable_is_one_answer
def show_job(job_id: str) -> tuple[Response, int]:
    """Report a job's state and, once it is done, what its POST would have answered."""
    job = read_job(state().queue.connection, job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        abort(404, description=f"no job {job_id}")
    code, body = job_outcome(job)
    # 200 is a finished job's answer, also when its worker died after publishing the backup.
    status = JobStatus.FINISHED.value if code == 200 else LOST if worker_lost(job) else job.get_status().value
    # 200 whatever the job's fate: the job was found; its fate is in "status" and "message".
    return jsonify({**body, "job": job.id, "status": status}), 200


@_unreadable_is_one_answer
def wait_for_job(job: Job, timeout: float) -> tuple[Response, int]:
    """Answer a POST: the job's outcome, or 202 pointing at the job if it is not done by `timeout`.

    A waiting POST holds one of the server's threads: when `api.server.WAITING_REQUESTS` wait already,
    it answers at once (202 and the job's Location), so that GETs and health checks always find one.
    """
    slots = state().waiting_slots
    if not slots.acquire(blocking=False):
        return _answer(job)
    try:
        _wait(job, timeout)
    finally:
        slots.release()
    return _answer(job)


def _wait(job: Job, timeout: float) -> None:
    """Wait up to `timeout` seconds for `job` to end (its result, a failure, or its worker lost)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        # latest_result blocks on Redis (XREAD) and wakes as soon as the worker stores a result.
        step = max(1, min(WAIT_STEP, math.ceil(remaining)))
        if job.latest_result(timeout=step) is not None or remaining <= 0:
            break
        if job.get_status() in (JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FAILED) or worker_lost(job):
            break


def _answer(job: Job) -> tuple[Response, int]:
    status, body = job_outcome(job)
    response = jsonify(body)
    if status == 202:
        response.headers["Location"] = url_for("jobs.show_job", job_id=job.id)
    return response, status


def job_outcome(job: Job) -> tuple[int, dict[str, Any]]:
    """Return the HTTP status and body that a POST gets for `job` in its current state."""
    success, failure, failure_status = _ANSWERS[job.func_name or ""]  # fetch_backup_job gives only these
    result = job.latest_result()
    if result is not None and result.type == Result.Type.SUCCESSFUL:
        value: dict[str, Any] = result.return_value or {}
        if job.func_name == BACKUP_JOB:  # the seed's answer, to the letter
            return 200, {"message": success, "filename": value["filename"], "filesize": value["filesize"]}
        return 200, {"message": success, **value}
    # Published (listed) before its worker died or failed, in rotation: the backup is there all the same.
    published = queue.published_backup(job) if job.func_name == BACKUP_JOB else None
    if published is not None:
        return 200, {"message": success, **published}
    status = job.get_status()
    if result is not None or status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
        if job.get_meta(refresh=True).get(UNCHECKED_META):  # the check could not be done: no verdict on the backup
            return 500, {"message": f"could not verify the backup: {_failure_cause(job, result)}"}
        return failure_status, {"message": f"{failure}: {_failure_cause(job, result)}"}
    if worker_lost(job):
        return 500, {"message": f"{failure}: {LOST_CAUSE}"}
    message = _UNFINISHED_MESSAGES.get(status, "{kind} " + status.value).format(kind=_kind(job))
    return 202, {"message": message, "job": job.id}


def _kind(job: Job) -> str:
    return KINDS.get(job.func_name or "", "job")


def worker_lost(job: Job) -> bool:
    """Whether `job` is "started" but its worker stopped renewing its heartbeat (killed, or cut off).

    RQ itself notices a dead worker only when the job's timeout has passed (an hour).
    """
    if job.connection.exists(heartbeat_key(job.id)):
        return False
    job.refresh()  # type: ignore[no-untyped-call]
    started = job.started_at
    if job.get_status(refresh=False) != JobStatus.STARTED or started is None:
        return False
    if started.tzinfo is None:  # RQ stores UTC
        started = started.replace(tzinfo=UTC)
    # A job that has just started may not have written its first heartbeat yet.
    return datetime.now(UTC) - started > timedelta(seconds=HEARTBEAT_TTL)


def _failure_cause(job: Job, result: Result | None) -> str:
    # The worker puts a known cause in job.meta; anything else is the last line of the traceback.
    cause = job.get_meta(refresh=True).get(ERROR_META)
    if cause:
        return str(cause)
    lines = (result.exc_string or "").strip().splitlines() if result is not None else []
    return lines[-1] if lines else f"the {_kind(job)} job ended as {job.get_status().value}"
