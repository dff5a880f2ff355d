"""The job queue shared by the API and the workers: Redis connection, RQ queue, key names.

The API enqueues `BACKUP_JOB` by its dotted path, so it never imports worker code. Jobs are
serialized as JSON, not pickle: whoever can write to Redis must not be able to run code in a worker.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import fakeredis
import redis
from redis.client import Pipeline
from rq import Queue
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from common.config import Config
from common.jobs import BACKUP_JOB as BACKUP_JOB  # the job names are re-exported: callers know them from here
from common.jobs import DRILL_JOB as DRILL_JOB
from common.jobs import JOB_TIMEOUT, JOBS, TrustedJob, read_backup_result
from common.jobs import QUEUE_NAME as QUEUE_NAME
from common.jobs import VERIFY_JOB as VERIFY_JOB
from common.redis_tools import text, transaction

logger = logging.getLogger(__name__)

PENDING_KEY = "etcd-backup:pending-job"
"""Id of the backup job that is queued and not yet started; POSTs that find one join it."""
PENDING_KEYS = {BACKUP_JOB: PENDING_KEY, DRILL_JOB: "etcd-backup:pending-drill"}
"""The jobs that coalesce: one queued at a time, which later requests (and ticks) join."""
LOCK_KEY = "etcd-backup:backup-lock"
"""Held by the worker that is taking a backup, so backups of one cluster run one at a time."""
HEARTBEAT_TTL = 10.0
"""Seconds a backup job's heartbeat key outlives its worker: a killed worker's POST fails this long after."""
ERROR_META = "error"
"""job.meta key where a worker puts the cause of a failed backup, for the API's 500 message."""
UNCHECKED_META = "unchecked"
"""job.meta key set when a verify job could not do the check (no space, no etcd tool): no verdict, no 422."""
PUBLISHED_META = "published"
"""job.meta key where a worker puts the new backup's filename and filesize as soon as it is listed:
the API answers success from it even if the worker dies afterwards (during rotation)."""
RESULT_TTL = 86400
"""Seconds a finished or failed job (and so GET /api/v1/jobs/<id>) is kept."""
PENDING_TTL = RESULT_TTL
"""Seconds before a pending marker expires by itself, should its job be lost (a flushed Redis)."""
REDIS_RETRY_SECONDS = 2.0
"""How often a starting worker or scheduler tries Redis again while it is unreachable."""
REDIS_SOCKET_TIMEOUT = 5.0
"""Seconds to connect to Redis before a request is answered 503."""
MAX_REDIS_CONNECTIONS = 256
"""A process's connections to Redis at most: each of the API's 128 threads (api.server) may hold one while a POST
waits for its job, beside the worker's and the delta watcher's. redis-py 8 caps a pool at 100 by default: 96
waiting POSTs and a few probes got 503 "Too many connections" (tests/test_slow_clients.py, under pytest-xdist)."""


def new_job_id() -> str:
    """A new job's id: 32 hex digits, the one form GET /api/v1/jobs/<id> looks up (RQ's own has dashes)."""
    return uuid.uuid4().hex


def heartbeat_key(job_id: str) -> str:
    """The key a worker renews while it runs the job `job_id` (worker.leases.job_heartbeat)."""
    return f"etcd-backup:heartbeat:{job_id}"


def connect(config: Config) -> redis.Redis:
    """Return a client for the configured Redis, or for a new embedded in-process one."""
    if config.redis_url is None:
        # The embedded mode: an in-process Redis, shared by the API and the worker thread.
        return fakeredis.FakeRedis(server=fakeredis.FakeServer(), max_connections=MAX_REDIS_CONNECTIONS)
    return redis.Redis.from_url(
        config.redis_url,
        socket_connect_timeout=REDIS_SOCKET_TIMEOUT,
        health_check_interval=30,
        max_connections=MAX_REDIS_CONNECTIONS,
    )


def job_queue(connection: redis.Redis) -> Queue:
    """The one queue of every kind of job (backup, verify, drill), as the API, the scheduler and the workers see it."""
    # TrustedJob: whatever RQ fetches from this queue's keys imports nothing but our job functions.
    return Queue(QUEUE_NAME, connection=connection, serializer=JSONSerializer, job_class=TrustedJob)


def enqueue_or_join(queue: Queue, function: str = BACKUP_JOB) -> Job:
    """Return the queued, not yet started backup job (or drill), enqueueing one if there is none.

    A job that is joined has not started, so its snapshot starts after the caller arrived. Backups
    go to the front of the queue: a drill or a verify queued before never delays one.
    """
    connection = queue.connection
    key = PENDING_KEYS[function]
    while True:
        # The marker and the job are written in one transaction, so a marker never names a job that is
        # still being enqueued; if another request or a worker changes the marker meanwhile, look again.
        new_or_pending = transaction(connection, lambda pipe: _enqueue_unless_pending(pipe, queue, function), key)
        if isinstance(new_or_pending, Job):
            return new_or_pending
        queued = read_job_or_none(connection, new_or_pending)
        if queued is not None and queued.get_status() == JobStatus.QUEUED:
            return queued
        # The marker outlived its job (the job expired or its Redis data was lost): drop it.
        release_pending(connection, new_or_pending, function)


def _enqueue_unless_pending(pipe: Pipeline, queue: Queue, function: str) -> Job | str:
    """The id the pending marker of `function` names; if there is none, a new job, queued on `pipe`
    with the marker that names it."""
    key = PENDING_KEYS[function]
    pending = pipe.get(key)
    if pending is not None:
        return text(pending)
    pipe.multi()
    job_id = new_job_id()
    pipe.set(key, job_id, ex=PENDING_TTL)
    job: Job = queue.enqueue_call(function, job_id=job_id, timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL,
                                  failure_ttl=RESULT_TTL, pipeline=pipe, at_front=function == BACKUP_JOB)
    return job


def enqueue_drill(queue: Queue) -> Job:
    """Queue a restore drill of the newest backup (worker.drill, run by a worker), or join the queued one."""
    return enqueue_or_join(queue, DRILL_JOB)


def enqueue_verify(queue: Queue, filename: str) -> Job:
    """Queue a check of backup `filename` (recovery.verify, run by a worker); the name is no secret."""
    job: Job = queue.enqueue_call(VERIFY_JOB, args=(filename,), job_id=new_job_id(), timeout=JOB_TIMEOUT,
                                  result_ttl=RESULT_TTL, failure_ttl=RESULT_TTL)
    return job


class UnreadableJob(Exception):
    """Job `job_id` is in Redis, but a value in its hash or result is not what RQ or this service writes."""

    def __init__(self, job_id: str, cause: BaseException) -> None:
        # Cut short: the value may be anything that was planted in Redis.
        super().__init__(f"job {job_id} has unreadable state in Redis: {type(cause).__name__}: {cause}"[:300])


def read_job(connection: redis.Redis, job_id: str) -> Job | None:
    """Return job `job_id`, or None if there is no such job (or it is none of ours); raise UnreadableJob
    if its hash is there but cannot be read."""
    try:
        job = TrustedJob.fetch(job_id, connection=connection, serializer=JSONSerializer)
        func_name = job.func_name
    except NoSuchJobError as exc:
        # TrustedJob takes a hash it cannot read for no job: the API must not say "no job" of one that is there.
        if not connection.exists(Job.key_for(job_id)):
            return None
        raise UnreadableJob(job_id, exc.__cause__ or exc) from exc
    except DeserializationError as exc:  # its data is not JSON of the form RQ writes
        raise UnreadableJob(job_id, exc.__cause__ or exc) from exc
    # Only compared, never imported: a name that is not one of ours is no job of ours.
    return job if isinstance(func_name, str) and func_name in JOBS else None


def read_job_or_none(connection: redis.Redis, job_id: str) -> Job | None:
    """Return job `job_id` (of any kind), or None if there is no such job, it is none of ours, or it is
    unreadable."""
    try:
        return read_job(connection, job_id)
    except UnreadableJob as exc:
        logger.warning("%s: taken for no job", exc)
        return None


def record_published(job: Job, result: dict[str, object]) -> None:
    """Note in `job`'s meta that its backup (`result`: common.jobs.backup_result) is complete and listed
    (PUBLISHED_META)."""
    job.meta[PUBLISHED_META] = result
    job.save_meta()  # type: ignore[no-untyped-call]


def published_backup(job: Job) -> dict[str, object] | None:
    """The backup_result that `job` recorded as published (record_published), if it did."""
    return read_backup_result(job.get_meta(refresh=True).get(PUBLISHED_META))


def release_pending(connection: redis.Redis, job_id: str, function: str = BACKUP_JOB) -> None:
    """Clear the pending marker if it still names `job_id`; new requests then queue a new job."""
    key = PENDING_KEYS[function]

    def delete_if_it_names_the_job(pipe: Pipeline) -> None:
        current = pipe.get(key)
        if current is not None and text(current) == job_id:
            pipe.multi()
            pipe.delete(key)

    transaction(connection, delete_if_it_names_the_job, key)


def retry_until_redis_answers(action: Callable[[], object]) -> None:
    """Run `action`, again every few seconds while Redis is unreachable: a process started before
    Redis (or while it restarts) waits for it rather than dying."""
    while True:
        try:
            action()
            return
        except redis.ConnectionError as exc:
            logger.warning("waiting for Redis: %s", exc)
            time.sleep(REDIS_RETRY_SECONDS)
