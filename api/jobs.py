"""GET /api/v1/jobs/<id>: where a job of any kind (backup, verify, drill) stands, and once it is done,
what its POST would have answered (api.outcomes)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from flask import Blueprint, Response, abort, jsonify
from rq.job import Job, JobStatus

from api.outcomes import job_outcome, unreadable_is_one_answer, worker_lost
from api.state import state
from common.queue import job_enqueued_at, read_job

bp = Blueprint("jobs", __name__, url_prefix="/api/v1/jobs")

JOB_ID = re.compile(r"[0-9a-f]{32}")
"""The form of every job id (common.queue.new_job_id), whatever its kind."""
LOST = "lost"
"""The status reported for a started job whose worker stopped answering."""


@bp.get("/<job_id>")
@unreadable_is_one_answer
def show_job(job_id: str) -> tuple[Response, int]:
    """Report a job's state and, once it is done, what its POST would have answered."""
    job = read_job(state().queue.connection, job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None:
        abort(404, description=f"no job {job_id}")
    code, body, read = job_outcome(job, _queued_at(job))
    # 200 is a finished job's answer, also when its worker died after publishing the backup. The status is
    # the one the answer was made from: read again, a job ending meanwhile was "finished", "in progress".
    status = JobStatus.FINISHED.value if code == 200 else LOST if worker_lost(job) else read.value
    # 200 whatever the job's fate: the job was found; its fate is in "status" and "message".
    return jsonify({**body, "job": job.id, "status": status}), 200


def _queued_at(job: Job) -> datetime:
    """When `job` was queued: the time its id carries (common.queue.new_job_id), which no Redis writer can change
    for the id a client holds, so that a forged result cannot name a backup taken before. A job queued by an
    earlier version has a random id: its hash's enqueued_at, then (which a Redis writer could change)."""
    from_id = job_enqueued_at(job.id)
    if from_id is not None:
        return from_id
    enqueued = job.enqueued_at
    if enqueued is None:  # never queued (RQ sets it on enqueue): no backup can be its answer
        return datetime.max.replace(tzinfo=UTC)
    return enqueued if enqueued.tzinfo is not None else enqueued.replace(tzinfo=UTC)  # RQ stores UTC
