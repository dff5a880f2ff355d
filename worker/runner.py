"""Run RQ workers for the backup queue: a process of its own, or a thread of the all-in-one server."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.worker import WorkerStatus

from common import etcd_seen, queue
from common.config import Config
from common.jobs import TrustedJob, refusal
from common.storage import StorageError, open_store
from recovery.workdir import remove_abandoned_workdirs
from worker.leases import live_backup

logger = logging.getLogger(__name__)


ENDED = (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)
"""What RQ records for a job that ended without a result."""
GIVE_BACKS = 3
"""Times a job that Redis' being full interrupted goes back on the queue before it is failed."""
GIVE_BACKS_META = "full-redis-give-backs"
"""job.meta key: how many times the job went back on the queue."""
FULL_REDIS_RETRY_SECONDS = 2.0
"""How often a worker tries again a write that Redis refused for being at its maxmemory."""
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _waits_out_a_full_redis(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run `method` again every few seconds while Redis answers OutOfMemoryError (at its maxmemory, with a policy
    that evicts nothing): RQ's loop would end the worker on it, and no backup would be taken until someone
    restarted it. Only for what is safe to run again (a registration, a heartbeat, a dequeue that moved nothing)."""

    @functools.wraps(method)
    def retried(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        while True:
            try:
                return method(*args, **kwargs)
            except redis.exceptions.OutOfMemoryError as exc:
                _wait_for_memory(f"{method.__name__}: {exc}")

    return retried


def _recorded_as_ended(job: Job) -> bool:
    """Whether Redis holds `job` as ended, with or without a result (or no longer holds it: nothing to redo)."""
    try:
        return job.get_status(refresh=True) in (JobStatus.FINISHED, *ENDED)
    except Exception:  # noqa: BLE001 - its hash gone or unreadable (a Redis writer's doing): nothing to give back
        return True


def _wait_for_memory(what: str) -> None:
    logger.warning("Redis is out of memory (maxmemory), trying again in %.0f s: %s", FULL_REDIS_RETRY_SECONDS,
                   what)
    time.sleep(FULL_REDIS_RETRY_SECONDS)


class ConfiguredJob(TrustedJob):
    """A TrustedJob whose function gets the config of the worker that runs it as its first argument
    (worker.jobs): the config, with etcd's credentials, never goes through Redis, and the job's
    arguments there stay those the API enqueued (common.jobs checks them)."""

    config: Config | None = None
    """Set by the BackupWorker about to run the job."""

    @property
    def func(self) -> Callable[..., Any]:
        function = super().func  # refuses what is not a job of ours
        if function is None or self.config is None:
            raise RuntimeError(f"job {self.id} has no function, or no worker gave it a config")
        return functools.partial(function, self.config)


PUBSUB_SLEEP = 1.0
"""Seconds RQ's pubsub thread (worker commands) waits for a message before it checks whether it should stop."""


class BackupWorker(SimpleWorker):
    """Runs jobs in the worker process itself, without fork(): a backup needs no isolation, and a
    forked child per job would add its start-up to every POST's round trip.

    It runs only this service's jobs (common.jobs): any other job found in Redis is failed, never
    imported or called, and logged as refused.
    """

    job_class = ConfiguredJob

    def __init__(self, connection: redis.Redis, config: Config) -> None:
        self.config = config  # what this worker's jobs run with (ConfiguredJob)
        # A job's description is whatever its writer put in Redis: never log it.
        super().__init__([queue.job_queue(connection)], connection=connection, serializer=JSONSerializer,
                         job_class=ConfiguredJob, log_job_description=False)

    def subscribe(self) -> None:
        """RQ's, with its pubsub thread waking every PUBSUB_SLEEP seconds rather than 60: after the unsubscribe that
        ends a worker, the thread sleeps that long before it sees the stop, and redis-py 8.2's stop() waits for it
        (a worker took up to a minute to stop, and a test's teardown 30 s)."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # RQ declares it None
            sleep_time=PUBSUB_SLEEP, daemon=True, exception_handler=self._pubsub_exception_handler)

    @_waits_out_a_full_redis
    def register_birth(self) -> None:
        super().register_birth()  # type: ignore[no-untyped-call]

    @_waits_out_a_full_redis
    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        # RQ's loop survives a lost Redis only in its dequeue: the heartbeat it sends right after a job ended the
        # worker for good when Redis went away at that moment (a restart). Wait for it, as a starting worker does.
        queue.retry_until_redis_answers(lambda: super(BackupWorker, self).heartbeat(timeout, pipeline))

    @_waits_out_a_full_redis  # the move of a job id off the queue is refused whole: nothing moved
    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        # RQ decodes the job ids it pops as UTF-8 and stops the worker on one that is not: drop such
        # ids (no job of ours has one) and go on.
        while True:
            try:
                return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except UnicodeDecodeError:
                self._drop_undecodable_ids()

    def run_maintenance_tasks(self) -> None:
        # RQ's housekeeping (dead jobs, worker and rate-limit registries) parses keys that whoever can
        # write to Redis can fill with anything, and its failure would stop the worker. Our own
        # heartbeat finds dead backup jobs, so a skipped clean-up costs nothing that matters.
        try:
            super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        except Exception as exc:  # noqa: BLE001 - logged; the worker goes on taking jobs
            logger.warning("RQ's registry clean-up failed on unexpected data in Redis, skipped: %s: %s",
                           type(exc).__name__, exc)

    def _drop_undecodable_ids(self) -> None:
        for worker_queue in self.queues:
            for key in (worker_queue.key, worker_queue.intermediate_queue.key):
                raw_ids: list[bytes] = self.connection.lrange(key, 0, -1)  # type: ignore[assignment]
                for raw in raw_ids:
                    try:
                        raw.decode()
                    except UnicodeDecodeError:
                        logger.error("dropped a job id that is not UTF-8 from %s: %r", key, raw[:100])
                        self.connection.lrem(key, 0, raw)  # type: ignore[arg-type]  # bytes, as Redis has it

    def execute_job(self, job: Job, origin: Queue) -> None:
        why = refusal(job)
        if why is None:
            assert isinstance(job, ConfiguredJob), "dequeued as this worker's job_class"
            job.config = self.config
            try:
                super().execute_job(job, origin)
            except redis.exceptions.OutOfMemoryError as exc:
                self._settle_after_a_full_redis(job, origin, exc)
            else:
                # RQ's failure handling logs a write that Redis refused and goes on: a job whose start, or whose
                # end, Redis refused so would be left "started" (or in RQ's intermediate queue) for good.
                if not _recorded_as_ended(job):
                    self._settle_after_a_full_redis(job, origin, redis.exceptions.OutOfMemoryError(
                        "the job's state was not recorded"))
            self._forget_oldest_jobs(origin)
            return
        logger.error("refused job %s: %s; moved to the failed jobs, nothing run", job.id, why)
        # RQ's own bookkeeping for a job that failed at once, so that the job ends in the failed
        # registry like any other; its callbacks, webhooks and retries are never acted on (TrustedJob).
        job.retries_left = None
        execution = self.prepare_execution(job)
        self.handle_job_failure(job, origin, exc_string=f"refused by etcd-backup's worker: {why}", execution=execution)
        self.set_state(WorkerStatus.IDLE)


    def _forget_oldest_jobs(self, origin: Queue) -> None:
        try:
            queue.forget_oldest_jobs(origin)
        except redis.RedisError as exc:  # the next job tries again; this one is done
            logger.warning("could not forget the oldest jobs: %s", exc)

    def _settle_after_a_full_redis(self, job: ConfiguredJob, origin: Queue, exc: redis.RedisError) -> None:
        """Once Redis takes writes again, give a job that Redis' being full interrupted back to the front of the
        queue, as it was (its callers still wait for it; each of our jobs may run again: a backup takes a new
        one), or after GIVE_BACKS times fail it with the cause (its callers get a 500 that says why rather than
        wait for an answer that never comes). Each is written once: a write after it that Redis refuses does
        not repeat it (a job given back twice would run twice)."""
        while True:
            _wait_for_memory(f"job {job.id}: {exc}")
            try:
                if self._give_back_or_fail(job, origin, exc):
                    break
            except redis.exceptions.OutOfMemoryError as again:
                exc = again
        try:
            self.set_state(WorkerStatus.IDLE)
        except redis.RedisError as again:  # the next heartbeat or job writes the state again
            logger.warning("could not record the worker as idle: %s", again)

    def _give_back_or_fail(self, job: ConfiguredJob, origin: Queue, exc: redis.RedisError) -> bool:
        """Whether `job` is now back on the queue, or failed with `exc` as its cause."""
        given_back = job.get_meta(refresh=True).get(GIVE_BACKS_META, 0)
        if not isinstance(given_back, int) or given_back >= GIVE_BACKS:
            job.meta[queue.ERROR_META] = f"Redis ran out of memory while the job ran: {exc}"
            job.save_meta()  # type: ignore[no-untyped-call]
            self.handle_job_failure(job, origin, exc_string=f"OutOfMemoryError: {exc}")
            return job.get_status(refresh=True) == JobStatus.FAILED  # RQ logs a failure it could not write
        job.meta[GIVE_BACKS_META] = given_back + 1
        job.save_meta()  # type: ignore[no-untyped-call]  # first: counted even if the give-back is refused
        with self.connection.pipeline() as pipe:  # MULTI/EXEC: all of it or, refused, none
            pipe.lrem(origin.intermediate_queue_key, 1, job.id)
            origin.started_job_registry.remove_executions(job, pipeline=pipe)
            job.set_status(JobStatus.QUEUED, pipeline=pipe)
            pipe.lpush(origin.key, job.id)
            pipe.execute()
        logger.warning("job %s: put back on the queue, Redis ran out of memory as it ran", job.id)
        return True


class ThreadWorker(BackupWorker):
    """A worker that runs off the main thread: no signal handlers (only the main thread may install
    them), a timer instead of SIGALRM for job timeouts, and `stop()` to end it between jobs."""

    death_penalty_class = TimerDeathPenalty
    POLL_SECONDS = 1
    """How often an idle worker looks whether it was asked to stop."""

    _thread: threading.Thread | None = None
    _reporter: tuple[threading.Thread, threading.Event] | None = None
    """This worker's etcd reporter (common.etcd_seen) and the event that stops it (start_thread_worker's)."""

    def _install_signal_handlers(self) -> None:
        pass

    def start(self) -> None:
        """Work the queue in a daemon thread."""
        self._thread = threading.Thread(target=self.work, kwargs={"logging_level": "INFO"}, name="rq-worker",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker, now if it is idle or after the current job; wait up to `timeout` for it."""
        self._stop_requested = True
        if self._reporter is not None:
            self._reporter[1].set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._reporter is not None:  # ends within its etcd check's timeout
            self._reporter[0].join(timeout)

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        # RQ's own wait only ends on a job; wait in short slices so that stop() is seen.
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(self.POLL_SECONDS, max_idle_time=self.POLL_SECONDS)
            if result is not None:
                return result
        return None


def prepare(config: Config, connection: redis.Redis) -> None:
    """Remove what a crashed backup, verify or drill left behind."""
    remove_abandoned_workdirs()
    # The live backup that holds the lock (on any worker) keeps its temp file; the others' are dead.
    try:
        open_store(config).remove_unpublished(lambda: live_backup(connection))
    except StorageError as exc:  # the store is down now: the next backup cleans up (under its lock)
        logger.warning("cannot clean up after interrupted backups: %s", exc)


def run_worker(config: Config) -> None:
    """Work the backup queue in this process until SIGTERM/SIGINT (finishing the current backup)."""
    connection = queue.connect(config)
    queue.retry_until_redis_answers(lambda: prepare(config, connection))
    worker = BackupWorker(connection, config)
    # What /readyz says about etcd comes from here: the API has no etcd credentials (common.etcd_seen).
    etcd_seen.start_reporter(config.etcd, connection, "worker")
    worker.work(logging_level="INFO")


def start_thread_worker(config: Config, connection: redis.Redis) -> ThreadWorker:
    """Start a worker thread on `connection` (the all-in-one server's); `stop()` ends it."""
    prepare(config, connection)
    worker = ThreadWorker(connection, config)
    worker._reporter = etcd_seen.start_reporter(config.etcd, connection, "worker")
    worker.start()
    return worker
