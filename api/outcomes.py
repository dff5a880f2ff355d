"""What a job answers over HTTP, and a POST's wait for that answer.

POST /api/v1/backup, POST /api/v1/backup/<name>/verify and GET /api/v1/jobs/<id> all answer from
`job_outcome`: `ANSWERS` holds, for each kind of job (backup, verify, drill), its messages and
statuses; the body of a success is the worker's result as the worker built it (common.jobs), with the
message in front.
"""

from __future__ import annotations

import functools
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from flask import Response, jsonify, url_for
from rq.exceptions import DeserializationError, InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result

from api.state import state
from common.backups import backup_time
from common.jobs import read_backup_result
from common.queue import (
    BACKUP_JOB,
    COMPACT_JOB,
    DRILL_JOB,
    ERROR_META,
    HEARTBEAT_TTL,
    UNCHECKED_META,
    VERIFY_JOB,
    UnreadableJob,
    heartbeat_key,
    published_backup,
)


def _backup_body(result: object) -> dict[str, object]:
    body = read_backup_result(result)
    if body is None:  # planted in Redis: no worker returns it
        raise ValueError("a backup's result is not its filename and filesize")
    return body


def _result_body(result: object) -> dict[str, Any]:
    if not isinstance(result, dict):  # planted in Redis: no worker returns it
        raise TypeError(f"a job's result is a {type(result).__name__}, not a mapping")
    return result


def _nothing_published(job: Job) -> None:
    return None


def _nothing_to_confirm(body: dict[str, Any], asked: datetime) -> None:
    return None


def _backup_not_confirmed(body: dict[str, Any], asked: datetime) -> str | None:
    """Why a backup's success as Redis reports it is no success: the backup it names is not in the store (with
    a signing key, not an authentic one), or its snapshot started before the backup was `asked` for (Redis' clock).
    A Redis writer can forge a job's result; the store and Redis' clock are the truth: an old backup's name and
    size, which anyone may list, are no answer to a POST that asks for a new backup."""
    filename = str(body["filename"])
    stored = state().store.stat(filename)
    if stored is None:
        return (f"the worker's report names {filename[:80]}, which is not in the store (a forged report in Redis, "
                "or a backup removed since)")
    if stored.size != body["filesize"]:
        return (f"the worker's report gives {filename} {body['filesize']} bytes, the store holds {stored.size} "
                "(a forged report in Redis)")
    started = _snapshot_start(filename)
    if started is None or started < asked:
        when = started.isoformat() if started is not None else "at an unknown time"
        return (f"the worker's report names {filename}, whose snapshot started {when}, before the backup was asked "
                f"for at {asked.isoformat()} (a forged report in Redis naming an older backup)")
    return None


def _snapshot_start(filename: str) -> datetime | None:
    """When backup `filename`'s snapshot started: its (authenticated) metadata's `started`; without metadata, the
    last instant of the second it is named after (a name has one-second resolution: a backup named in the second
    the request arrived may have started after it, and is given the benefit of the doubt)."""
    metadata = state().store.read_metadata(filename)
    if metadata is not None:
        return metadata.started_at()
    named = backup_time(filename)
    return named + NAME_RESOLUTION - timedelta(microseconds=1) if named is not None else None


@dataclass(frozen=True)
class KindAnswers:
    """How the state of one kind of job becomes its HTTP answer."""

    word: str
    """Names the kind in the answers about it: "verify queued"."""
    success: str
    """The message of a 200, followed by `success_body` of the worker's result."""
    failure: str
    """The message of a job that ended without a result, before its cause."""
    failure_status: int
    success_body: Callable[[object], dict[str, Any]] = _result_body
    published: Callable[[Job], dict[str, object] | None] = _nothing_published
    """What the job recorded as done before it ended: a 200 even if its worker then died or failed."""
    no_verdict: str | None = None
    """The message (a 500) of a check that could not be done, so passed no verdict (UNCHECKED_META)."""
    unconfirmed: Callable[[dict[str, Any], datetime], str | None] = _nothing_to_confirm
    """Why the body of a 200, as Redis reports it, is not true for a job asked for at the given time (a 500 with
    this cause), or None."""


ANSWERS: dict[str, KindAnswers] = {
    # The original etcd-backup's answers, to the letter. A backup published (listed) before its worker
    # died or failed, in rotation, is there all the same.
    BACKUP_JOB: KindAnswers("backup", "backup successfully", "failed to save an etcd backup", 500,
                            success_body=_backup_body, published=published_backup,
                            unconfirmed=_backup_not_confirmed),
    # A check that ran and found the backup bad is no server error.
    VERIFY_JOB: KindAnswers("verify", "backup verified", "backup verification failed", 422,
                            no_verdict="could not verify the backup"),
    # A drill that ran reports passed or not in its body; "failed" is a drill that could not run.
    DRILL_JOB: KindAnswers("drill", "drill done", "drill failed", 500),
    COMPACT_JOB: KindAnswers("compaction", "compaction done", "compaction failed", 500),
}
"""Every kind of job, by its function (common.queue.read_job gives no other)."""
LOST_CAUSE = ("the worker taking the backup stopped answering before it reported a result "
              "(killed, crashed or cut off from Redis); no partial backup is listed")
ENDED_WITHOUT_RESULT = (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
NAME_RESOLUTION = timedelta(seconds=1)
"""A backup's name tells its time to the second (common.backups)."""
WAIT_STEP = 2
"""Seconds of one blocking wait for a result; between waits the job's state is looked at again."""

_UNFINISHED_MESSAGES = {
    JobStatus.QUEUED: "{kind} queued",
    JobStatus.STARTED: "{kind} in progress",
}
_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError, zlib.error,
               DeserializationError, InvalidJobOperation, NoSuchJobError)
"""What RQ's parsing of a job's hash and result, and this module's reading of them, raise on a value that
neither RQ nor a worker wrote (JSON that is no mapping, a date that is no date, JSON nested deeper than the
recursion limit: json.loads raises RecursionError and unwinds cleanly, ...); NoSuchJobError is TrustedJob's
answer to such a hash on a refresh."""
_P = ParamSpec("_P")
_R = TypeVar("_R")


def unreadable_is_one_answer(answer: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn a bad value in the Redis state of the job being answered about into UnreadableJob: one 500 for
    that job (api.errors), never a crash of anything else."""

    @functools.wraps(answer)
    def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return answer(*args, **kwargs)
        except _UNREADABLE as exc:
            job_id = kwargs.get("job_id") or next(arg.id for arg in args if isinstance(arg, Job))
            raise UnreadableJob(str(job_id), exc) from exc

    return guarded


@unreadable_is_one_answer
def wait_for_job(job: Job, timeout: float, arrived: datetime) -> tuple[Response, int]:
    """Answer a POST that `arrived` (Redis' clock): the job's outcome, or 202 pointing at the job if it is not done
    by `timeout`.

    A waiting POST holds one of the server's threads: when `api.server.WAITING_REQUESTS` wait already,
    it answers at once (202 and the job's Location), so that GETs and health checks always find one.
    """
    slots = state().waiting_slots
    if not slots.acquire(blocking=False):
        return _answer(job, arrived)
    try:
        _wait(job, timeout)
    finally:
        slots.release()
    return _answer(job, arrived)


def _wait(job: Job, timeout: float) -> None:
    """Wait up to `timeout` seconds for `job` to end (its result, a failure, or its worker lost)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        # latest_result blocks on Redis (XREAD) and wakes as soon as the worker stores a result.
        step = max(1, min(WAIT_STEP, math.ceil(remaining)))
        if job.latest_result(timeout=step) is not None or remaining <= 0:
            break
        if job.get_status() in ENDED_WITHOUT_RESULT or worker_lost(job):
            break


def _answer(job: Job, arrived: datetime) -> tuple[Response, int]:
    status, body, _ = job_outcome(job, arrived)
    response = jsonify(body)
    if status == 202:
        response.headers["Location"] = url_for("jobs.show_job", job_id=job.id)
    return response, status


def job_outcome(job: Job, asked: datetime) -> tuple[int, dict[str, Any], JobStatus]:
    """Return the HTTP status and body that a POST gets for `job` in its current state, and the job's status
    they were made from (read once: a job that ends meanwhile must not be "finished" and "in progress").
    `asked` is when the job was asked for (Redis' clock): a success must be of work begun after it."""
    answers = ANSWERS[job.func_name or ""]
    result = job.latest_result()
    if (succeeded := _succeeded(result, answers)) is not None:
        return _confirmed(answers, succeeded, JobStatus.FINISHED, asked)
    published = answers.published(job)
    if published is not None:
        return _confirmed(answers, {"message": answers.success, **published}, JobStatus.FINISHED, asked)
    status = job.get_status()
    if result is not None or status in ENDED_WITHOUT_RESULT:
        cause = _failure_cause(job, result, answers)
        if answers.no_verdict is not None and job.get_meta(refresh=True).get(UNCHECKED_META):
            return 500, {"message": f"{answers.no_verdict}: {cause}"}, status
        return answers.failure_status, {"message": f"{answers.failure}: {cause}"}, status
    if worker_lost(job):
        return 500, {"message": f"{answers.failure}: {LOST_CAUSE}"}, status
    # It ended between the reads above: its result is in now.
    if status == JobStatus.FINISHED and (succeeded := _succeeded(job.latest_result(), answers)) is not None:
        return _confirmed(answers, succeeded, status, asked)
    message = _UNFINISHED_MESSAGES.get(status, "{kind} " + status.value).format(kind=answers.word)
    return 202, {"message": message, "job": job.id}, status


def _confirmed(answers: KindAnswers, body: dict[str, Any], status: JobStatus,
               asked: datetime) -> tuple[int, dict[str, Any], JobStatus]:
    """A success's 200, or a 500 if what it reports is not true (KindAnswers.unconfirmed)."""
    problem = answers.unconfirmed(body, asked)
    if problem is not None:
        return 500, {"message": f"{answers.failure}: {problem}"}, status
    return 200, body, status


def _succeeded(result: Result | None, answers: KindAnswers) -> dict[str, Any] | None:
    if result is None or result.type != Result.Type.SUCCESSFUL:
        return None
    return {"message": answers.success, **answers.success_body(result.return_value or {})}


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


def _failure_cause(job: Job, result: Result | None, answers: KindAnswers) -> str:
    # The worker puts a known cause in job.meta; anything else is the last line of the traceback.
    cause = job.get_meta(refresh=True).get(ERROR_META)
    if cause:
        return str(cause)
    lines = (result.exc_string or "").strip().splitlines() if result is not None else []
    return lines[-1] if lines else f"the {answers.word} job ended as {job.get_status().value}"
