"""The job queue shared by the API and the workers: Redis connection, RQ queue, key names.

The API enqueues `BACKUP_JOB` by its dotted path, so it never imports worker code. Jobs are
serialized as JSON, not pickle: whoever can write to Redis must not be able to run code in a worker.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import fakeredis
import redis
from redis.client import Pipeline
from rq import Queue
from rq.exceptions import DeserializationError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from common.clock import redis_clock
from common.config import Config
from common.jobs import BACKUP_JOB as BACKUP_JOB  # the job names are re-exported: callers know them from here
from common.jobs import COMPACT_JOB as COMPACT_JOB
from common.jobs import DRILL_JOB as DRILL_JOB
from common.jobs import JOB_TIMEOUT, JOBS, TrustedJob, read_backup_result
from common.jobs import QUEUE_NAME as QUEUE_NAME
from common.jobs import VERIFY_JOB as VERIFY_JOB
from common.redis_tools import text, transaction

logger = logging.getLogger(__name__)

PENDING_KEY = "etcd-backup:pending-job"
"""Id of the backup job that is queued and not yet started; POSTs that find one join it."""
PENDING_KEYS = {BACKUP_JOB: PENDING_KEY, DRILL_JOB: "etcd-backup:pending-drill",
                COMPACT_JOB: "etcd-backup:pending-compaction"}
"""The jobs that coalesce: one queued at a time, which later requests (and ticks) join. A verify job
coalesces per backup, under VERIFY_PENDING_PREFIX + the backup's name (pending_key)."""
VERIFY_PENDING_PREFIX = "etcd-backup:pending-verify:"
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
MAX_KEPT_JOBS = 1000
"""Finished jobs kept at most, and failed jobs (the oldest forgotten first: forget_oldest_jobs). Kept a day each,
the jobs of a day of POSTs would grow Redis without a bound: back to back, a backup a second and several checks,
about 8 KiB each (tests/test_flood.py)."""
PENDING_TTL = JOB_TIMEOUT + 120
"""Seconds before a pending marker expires by itself, should its job be lost (a flushed Redis). A queued backup
(or drill) goes to the front of the queue: it waits at most for the jobs running to end, each within
JOB_TIMEOUT. A marker without a TTL, or with a longer one, is none that this service wrote: never trusted."""
RETRY_AFTER_SECONDS = 60
"""What a request refused by the queue bound (QueueFull, a 429) is told to wait: about a verify job's time."""
REDIS_RETRY_SECONDS = 2.0
"""How often a starting worker or scheduler tries Redis again while it is unreachable."""
REDIS_SOCKET_TIMEOUT = 5.0
"""Seconds to connect to Redis before a request is answered 503."""
MAX_REDIS_CONNECTIONS = 256
"""A process's connections to Redis at most: each of the API's 128 threads (api.server) may hold one while a POST
waits for its job, beside the worker's and the delta watcher's. redis-py 8 caps a pool at 100 by default: 96
waiting POSTs and a few probes got 503 "Too many connections" (tests/test_slow_clients.py, under pytest-xdist)."""
UUID7_VERSION = 0x7
"""The version of UUIDs whose first 48 bits are a time, in milliseconds since 1970 (RFC 9562)."""
UUID_VARIANT = 0b10
"""RFC 9562's variant bits, which every UUID has."""


def new_job_id(enqueued: datetime) -> str:
    """A new job's id: 32 hex digits, the one form GET /api/v1/jobs/<id> looks up (RQ's own has dashes), laid out
    as a UUIDv7 (RFC 9562): the milliseconds of `enqueued` (Redis' clock), then 74 random bits.

    The id carries the time the job was queued because everything else about the job is in Redis, where a Redis
    writer may change it: the id is what a client holds (a 202's Location), so GET /api/v1/jobs/<id> can refuse a
    success naming a backup taken before the job was queued (job_enqueued_at)."""
    milliseconds = int(enqueued.timestamp() * 1000)
    return uuid.UUID(int=(milliseconds << 80) | (UUID7_VERSION << 76) | (secrets.randbits(12) << 64)
                     | (UUID_VARIANT << 62) | secrets.randbits(62)).hex


def job_enqueued_at(job_id: str) -> datetime | None:
    """When job `job_id` was queued, as its id says (new_job_id), to the millisecond below; None for an id that
    carries no time (a random UUID: a job queued by an earlier version of etcd-backup, or by none)."""
    try:
        value = uuid.UUID(hex=job_id)
    except ValueError:
        return None
    if value.version != UUID7_VERSION or value.variant != uuid.RFC_4122:
        return None
    return datetime.fromtimestamp((value.int >> 80) / 1000, UTC)


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


class QueueFull(Exception):
    """The job queue holds `max-queued-jobs` jobs already: a new verify job is refused (429)."""

    def __init__(self, queued: int, bound: int) -> None:
        super().__init__(f"the job queue is full ({queued} jobs queued, max-queued-jobs is {bound}): retry later")


def pending_key(function: str, args: tuple[str, ...] = ()) -> str:
    """The key of the pending marker of `function` called with `args`: one per kind of job, one per backup
    for verify jobs (whose one argument, a backup name, common.jobs checks)."""
    if function == VERIFY_JOB:
        [filename] = args
        return VERIFY_PENDING_PREFIX + filename
    return PENDING_KEYS[function]


def enqueue_or_join(queue: Queue, function: str = BACKUP_JOB, args: tuple[str, ...] = (),
                    max_queued: int | None = None) -> Job:
    """Return the queued, not yet started job of `function` with `args` (a backup, a drill, the verify of one
    backup), enqueueing one if there is none.

    A job that is joined has not started, so its snapshot (or check) starts after the caller arrived. Only a
    job that this service queued is joined: the marker must have the TTL this service gives it, and the job it
    names must be of that kind and on the queue, waiting, its id telling it was queued within the marker's TTL
    (a Redis writer's marker naming a job never queued, with a forged result, would answer every POST).
    Joining costs nothing and is never refused; a new job is refused (QueueFull) when the queue holds
    `max_queued` jobs already (None: never; backups and drills, at most one queued of each, are never refused).
    Backups go to the front of the queue: a drill or a verify queued before never delays one.
    """
    connection = queue.connection
    key = pending_key(function, args)
    watched = (key, queue.key) if max_queued is not None else (key,)
    while True:
        # The marker and the job are written in one transaction, so a marker never names a job that is
        # still being enqueued; if another request or a worker changes the marker (or the queue, when it is
        # bounded) meanwhile, look again.
        new_or_pending = transaction(
            connection, lambda pipe: _enqueue_unless_pending(pipe, queue, function, args, max_queued), *watched)
        if isinstance(new_or_pending, Job):
            return new_or_pending
        queued = read_job_or_none(connection, new_or_pending)
        if queued is not None and _waiting_on_the_queue(queue, queued, function, args):
            return queued
        # The marker outlived its job (the job started, expired or its Redis data was lost), or names what this
        # service never queued: drop it.
        logger.info("pending marker %s names job %s, which is not waiting on the queue: dropped", key,
                    new_or_pending[:40])
        release_pending(connection, new_or_pending, function, args)


def _waiting_on_the_queue(queue: Queue, job: Job, function: str, args: tuple[str, ...]) -> bool:
    """Whether `job` is a job of `function` with `args` that waits on `queue` (so a worker will run it), queued
    while its pending marker could still name it (its id says when: new_job_id).

    The time in the id is what GET /api/v1/jobs/<id> checks a success against; a job a Redis writer planted with
    an id that tells no time, or an old one, would let a forged success name any older backup there."""
    queued_at, now = job_enqueued_at(job.id), redis_clock(queue.connection)()
    if queued_at is None or not now - timedelta(seconds=PENDING_TTL) <= queued_at <= now:
        return False
    try:
        same_call = job.func_name == function and tuple(job.args) == args
    except Exception:  # noqa: BLE001 - arguments that are not what RQ writes: no job of ours
        return False
    return (same_call and job.get_status() == JobStatus.QUEUED
            and queue.connection.lpos(queue.key, job.id) is not None)


def _enqueue_unless_pending(pipe: Pipeline, queue: Queue, function: str, args: tuple[str, ...],
                            max_queued: int | None) -> Job | str:
    """The id the pending marker of `function` names, if this service set it; if there is none, a new job,
    queued on `pipe` with the marker that names it (QueueFull if the queue holds `max_queued` jobs)."""
    key = pending_key(function, args)
    pending, ttl = pipe.get(key), pipe.ttl(key)
    if pending is not None and 0 < ttl <= PENDING_TTL:
        return text(pending)
    if pending is not None:  # no TTL (-1), or longer than any this service sets: a Redis writer's
        logger.warning("pending marker %s has a TTL of %s, which etcd-backup never sets: not trusted, replaced",
                       key, ttl)
    if max_queued is not None and (queued := pipe.llen(queue.key)) >= max_queued:
        raise QueueFull(queued, max_queued)
    job_id = new_job_id(redis_clock(pipe)())  # read now (before MULTI): the clock that named every backup
    pipe.multi()
    pipe.set(key, job_id, ex=PENDING_TTL)
    job: Job = queue.enqueue_call(function, args=args, job_id=job_id, timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL,
                                  failure_ttl=RESULT_TTL, pipeline=pipe, at_front=function == BACKUP_JOB)
    return job


def enqueue_drill(queue: Queue) -> Job:
    """Queue a restore drill of the newest backup (worker.drill, run by a worker), or join the queued one."""
    return enqueue_or_join(queue, DRILL_JOB)


def enqueue_compaction(queue: Queue) -> Job:
    """Queue a compaction of the newest backup and its deltas (worker.compact, run by a worker), or join the queued
    one."""
    return enqueue_or_join(queue, COMPACT_JOB)


def enqueue_verify(queue: Queue, filename: str, max_queued: int | None) -> Job:
    """Queue a check of backup `filename` (recovery.verify, run by a worker), or join the one queued; QueueFull
    if a new job would make more than `max_queued`. The name is no secret."""
    return enqueue_or_join(queue, VERIFY_JOB, (filename,), max_queued)


def forget_oldest_jobs(queue: Queue) -> None:
    """Delete the oldest finished and failed jobs beyond MAX_KEPT_JOBS of each (a worker calls it after each job)."""
    connection = queue.connection
    for registry in (queue.finished_job_registry, queue.failed_job_registry):
        excess = registry.count - MAX_KEPT_JOBS
        if excess <= 0:
            continue
        for job_id in registry.get_job_ids(0, excess - 1, cleanup=False):  # the soonest to expire: the oldest
            job = read_job_or_none(connection, job_id)
            if job is not None:
                job.delete(remove_from_queue=False)
            else:  # none of ours, or unreadable: only its keys go, nothing of it is read
                connection.delete(Job.key_for(job_id), f"rq:results:{job_id}")
            registry.remove(job_id)


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


def release_pending(connection: redis.Redis, job_id: str, function: str = BACKUP_JOB,
                    args: tuple[str, ...] = ()) -> None:
    """Clear the pending marker (of `function` with `args`) if it still names `job_id`; new requests then
    queue a new job."""
    key = pending_key(function, args)

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
