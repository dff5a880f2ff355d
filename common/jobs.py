"""The jobs this service runs, and the RQ Job class that refuses every other job.

Whoever can write to Redis can put any job hash in the queue: a function name such as
`subprocess.call` with chosen arguments, callbacks (`on_success`, ...), webhooks, retries, a zlib
bomb as its data. RQ itself imports and calls whatever a job names. `TrustedJob` is the only job
class the workers use: it imports nothing but the four functions below, never a callback or a
webhook, and `refusal()` says why a job is not one that this service's API or scheduler enqueues, so
that the worker fails it without running anything.
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import Callable
from typing import Any

from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.results import Result
from rq.utils import import_attribute

from common.backups import is_backup_name

logger = logging.getLogger(__name__)

QUEUE_NAME = "etcd-backup"
BACKUP_JOB = "worker.jobs.take_backup"
DRILL_JOB = "worker.jobs.restore_drill"
VERIFY_JOB = "worker.jobs.verify_backup"
COMPACT_JOB = "worker.jobs.compact_backups"
JOB_TIMEOUT = 3600
"""Seconds a worker may spend on one job (etcd's 8 GiB maximum streams in a few minutes)."""



def backup_result(filename: str, filesize: int, stale: str | None = None) -> dict[str, object]:
    """What a backup job returns, and records as published: the original etcd-backup's answer to a POST
    but its message (which the API adds); for a stale backup (allow-stale-member), also why it is stale."""
    result: dict[str, object] = {"filename": filename, "filesize": filesize}
    if stale is not None:
        result["stale"] = stale
    return result


def read_backup_result(value: object) -> dict[str, object] | None:
    """`value`, read from Redis, as a backup_result; None if it is not one (anyone who can write to Redis
    can write there)."""
    if not (isinstance(value, dict) and isinstance(value.get("filename"), str)
            and isinstance(value.get("filesize"), int) and isinstance(value.get("stale", ""), str)):
        return None
    return backup_result(value["filename"], value["filesize"], value.get("stale"))


MAX_JOB_FIELD_BYTES = 1 << 20
"""A job's compressed fields (its data, a failure's traceback) may inflate to this much, no more."""


def _no_arguments(args: list[Any], kwargs: dict[str, Any]) -> str | None:
    return None if not args and not kwargs else "it takes no arguments"


def _one_backup_name(args: list[Any], kwargs: dict[str, Any]) -> str | None:
    if kwargs or len(args) != 1 or not isinstance(args[0], str) or not is_backup_name(args[0]):
        return "it takes one argument, a backup name"
    return None


ARGUMENT_CHECKS: dict[str, Callable[[list[Any], dict[str, Any]], str | None]] = {
    BACKUP_JOB: _no_arguments,
    DRILL_JOB: _no_arguments,
    VERIFY_JOB: _one_backup_name,
    COMPACT_JOB: _no_arguments,
}
"""The functions a worker runs, each with the check of the arguments a job may give it (in Redis; the
worker passes its own config before them: worker.runner.ConfiguredJob)."""
JOBS = frozenset(ARGUMENT_CHECKS)


class RefusedJob(Exception):
    """A job that is not one of ours was about to be imported or called."""


class TrustedJob(Job):
    """An RQ job that imports and calls only this service's job functions.

    The worker refuses other jobs before it runs them (`refusal`); these overrides make sure that no
    other RQ code path (registry clean-up calling a dead job's failure callback, webhooks after a
    failure) imports or calls what a job hash names either.
    """

    def restore(self, raw_data: Any) -> Any:
        # RQ inflates `data` and `exc_info` whole and parses the other fields without a guard: a
        # bomb would exhaust memory, a bad field would raise out of the worker's loop and stop it.
        # A job that cannot be read safely is treated as one that does not exist.
        for field in (b"data", b"exc_info"):
            value = raw_data.get(field) if isinstance(raw_data, dict) else None
            if isinstance(value, bytes) and not _inflates_within_bound(value):
                raise NoSuchJobError(f"job {self.id}: its {field.decode()} inflates beyond {MAX_JOB_FIELD_BYTES} bytes")
        try:
            return super().restore(raw_data)
        except NoSuchJobError:
            raise
        except Exception as exc:
            logger.warning("job %s in Redis is unreadable (%s: %s): ignored", self.id, type(exc).__name__, exc)
            raise NoSuchJobError(f"job {self.id} is unreadable") from exc

    def latest_result(self, timeout: int = 0) -> Result | None:
        return _BoundedResult.fetch_latest(self, serializer=self.serializer, timeout=timeout)

    @property
    def func(self) -> Callable[..., Any] | None:
        why = refusal(self)
        if why is not None:
            raise RefusedJob(f"job {self.id} refused: {why}")
        return import_attribute(str(self.func_name))  # one of JOBS: refusal() checked it

    # RQ imports these by name from the job hash. Our jobs have none, and no other job runs.
    @property
    def success_callback(self) -> None:
        return None

    @property
    def failure_callback(self) -> None:
        return None

    @property
    def stopped_callback(self) -> None:
        return None

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        return None


class _BoundedResult(Result):
    """A job's result as RQ stores it, refused (ValueError) when its traceback would inflate past the bound."""

    @classmethod
    def restore(cls, job_id: str, result_id: str, payload: dict[Any, Any], connection: Any,
                serializer: Any = None) -> Result:
        compressed = payload.get(b"exc_string") or payload.get("exc_string")
        if compressed and not _inflates_within_bound(base64.b64decode(compressed)):
            raise ValueError(f"the result of job {job_id} inflates beyond {MAX_JOB_FIELD_BYTES} bytes")
        return super().restore(job_id, result_id, payload, connection, serializer)


def refusal(job: Job) -> str | None:
    """Return why `job` is not a job of this service's (so a worker must not run it), or None."""
    try:
        func_name, instance, args, kwargs = job.func_name, job.instance, job.args, job.kwargs
    except Exception as exc:  # data that is not JSON of the form RQ writes
        return f"its data is unreadable ({type(exc).__name__})"
    check = ARGUMENT_CHECKS.get(func_name) if isinstance(func_name, str) else None
    if check is None:
        return f"{str(func_name)[:100]!r} is not a job of etcd-backup's"
    if instance is not None:
        return "it names an object to call a method on"
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return "its arguments are malformed"
    if (why := check(list(args), kwargs)) is not None:
        return why
    if job.origin != QUEUE_NAME:
        return f"it comes from queue {job.origin[:100]!r}, not {QUEUE_NAME!r}"
    # Fields that make RQ import, call, fetch or repeat something; our jobs never set any of them.
    extras = {
        "callbacks": any((job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)),
        "webhooks": bool(job.webhooks),
        "dependencies": bool(job._dependency_ids),
        "retries": bool(job.retries_left),
        "repeats": bool(job.repeats_left),
        "a rate limit": job.rate_limit_key is not None,
    }
    if found := [name for name, present in extras.items() if present]:
        return f"it sets {', '.join(found)}, which etcd-backup's jobs never do"
    if not isinstance(job.timeout, int) or not 0 < job.timeout <= JOB_TIMEOUT:
        return f"its timeout is not between 1 and {JOB_TIMEOUT} seconds"
    return None


def _inflates_within_bound(value: bytes) -> bool:
    """Whether `value`, if it is zlib data (RQ compresses some fields), inflates to the bound or less."""
    inflater = zlib.decompressobj()
    try:
        inflater.decompress(value, MAX_JOB_FIELD_BYTES)
    except zlib.error:
        return True  # not compressed: RQ then takes the bytes as they are
    return not inflater.unconsumed_tail
