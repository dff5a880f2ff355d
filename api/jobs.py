"""GET /api/v1/jobs/<id>: where a job of any kind (backup, verify, drill) stands, and once it is done,
what its POST would have answered (api.outcomes)."""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort, jsonify
from rq.job import JobStatus

from api.outcomes import job_outcome, unreadable_is_one_answer, worker_lost
from api.state import state
from common.queue import read_job

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
    code, body, read = job_outcome(job)
    # 200 is a finished job's answer, also when its worker died after publishing the backup. The status is
    # the one the answer was made from: read again, a job ending meanwhile was "finished", "in progress".
    status = JobStatus.FINISHED.value if code == 200 else LOST if worker_lost(job) else read.value
    # 200 whatever the job's fate: the job was found; its fate is in "status" and "message".
    return jsonify({**body, "job": job.id, "status": status}), 200
