"""The ticks of the backup schedule and of the restore drill, and RQ's cron scheduler driving them.

RQ's `CronScheduler` keeps the time table (when the next tick is due, its heartbeat and registry
in Redis, signals); what a tick does is ours, in a `CronJob` subclass:

- one backup per tick however many schedulers run: the first to claim the tick in Redis
  (SET NX on a key named after the tick's time) enqueues, the others let it pass;
- the backup job is enqueued like a POST's (common.queue.enqueue_or_join: JSON, no arguments),
  and joins a backup already queued instead of adding one;
- with `skip-unchanged`, a tick finds etcd at the newest backup's revision and counts a skip;
- the cron expression is read in UTC (RQ reads it in the host's local time);
- with deltas and `compact-after-revisions`, every COMPACTION_CHECK a tick looks whether the deltas after the
  newest backup reach that many revisions past it (names and one metadata file: worker.compact.due), and if so
  queues a compaction (one queued at most), which a worker runs on its own throwaway etcd, never production's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import redis
from rq.cron import CronJob, CronScheduler
from rq.job import Job

from common import backups, etcd
from common.clock import redis_clock
from common.config import Config, next_fire
from common.metrics import record_outcome
from common.queue import (
    BACKUP_JOB,
    COMPACT_JOB,
    DRILL_JOB,
    QUEUE_NAME,
    connect,
    enqueue_compaction,
    enqueue_drill,
    enqueue_or_join,
    job_queue,
    retry_until_redis_answers,
)
from common.storage import open_store

logger = logging.getLogger(__name__)

COMPACTION_CHECK = "* * * * * */10"
"""Every 10 seconds (croniter reads a sixth field as seconds): a compaction is queued at most that long after it
is due."""
TICK_KEY_TTL = 86400
"""Seconds a claimed tick is remembered (any scheduler that is that late gives up the tick anyway)."""


def tick_key(tick: datetime, kind: str = "schedule") -> str:
    return f"etcd-backup:{kind}-tick:{tick.astimezone(UTC).isoformat()}"


def _claim(connection: redis.Redis, tick: datetime, kind: str, scheduler: str) -> bool:
    """Whether this scheduler is the first to claim the tick (the others let it pass)."""
    if connection.set(tick_key(tick, kind), scheduler, nx=True, ex=TICK_KEY_TTL):
        return True
    logger.info("%s tick %s: taken by another scheduler", kind, tick.isoformat())
    return False


def run_tick(config: Config, connection: redis.Redis, tick: datetime, scheduler: str) -> Job | None:
    """Take the backup due at `tick`, unless another scheduler claimed the tick or it is skipped."""
    if not _claim(connection, tick, "schedule", scheduler):
        return None
    if config.skip_unchanged:
        unchanged_since = _unchanged_since(config, connection)
        if unchanged_since is not None:
            record_outcome(connection, "skipped")
            logger.info("tick %s: skipped, etcd's revision is unchanged since %s", tick.isoformat(), unchanged_since)
            return None
    job = enqueue_or_join(job_queue(connection))
    logger.info("tick %s: backup job %s", tick.isoformat(), job.id)
    return job


def run_drill_tick(config: Config, connection: redis.Redis, tick: datetime, scheduler: str) -> Job | None:
    """Queue the restore drill due at `tick` (a worker runs it), unless another scheduler claimed the tick."""
    if not _claim(connection, tick, "drill", scheduler):
        return None
    job = enqueue_drill(job_queue(connection))
    logger.info("drill tick %s: drill job %s", tick.isoformat(), job.id)
    return job


_BACKOFF_IF_TRUSTED = """
local ttl = redis.call('TTL', KEYS[1])
if ttl == -1 or ttl > tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) return -2 end
return ttl
"""
"""The compaction back-off key's TTL (-2: none), after deleting one the worker did not set (no TTL, or a longer one)."""


def run_compaction_tick(config: Config, connection: redis.Redis, tick: datetime, scheduler: str) -> Job | None:
    """Queue a compaction (a worker runs it) if the deltas after the newest backup reach compact-after-revisions
    past it. No tick is claimed (a key every 10 s would pile up in Redis): two schedulers that both find it due
    queue one compaction, as the second joins the first's (common.queue.enqueue_or_join)."""
    from worker.compact import BACKOFF_KEY, BACKOFF_SECONDS, due  # the worker's; imported by a scheduler that compacts

    # The last compaction failed: none for a while (its TTL). A key without that TTL (set by hand, or by whoever
    # can write to Redis) is deleted, not obeyed: it would stop compactions for ever, silently.
    if int(connection.register_script(_BACKOFF_IF_TRUSTED)(keys=[BACKOFF_KEY], args=[BACKOFF_SECONDS])) >= 0:
        return None
    found = due(config, open_store(config), redis_clock(connection)())
    if found is None:
        return None
    base, metadata, last = found
    if _standby_alive(connection):
        # It compacts as the deltas come (worker.standby): no job to do it again, unless it is far behind (slow, or
        # no standby at all: whoever can write Redis can set its lease key, TTL and all).
        if last - metadata.revision < STANDBY_BEHIND * config.compact_after_revisions:
            return None
        logger.warning("compaction tick %s: a standby holds its lease, but the deltas reach %d revisions past the "
                       "newest backup %s, %d times compact-after-revisions: queuing a compaction job all the same",
                       tick.isoformat(), last - metadata.revision, base, STANDBY_BEHIND)
    job = enqueue_compaction(job_queue(connection))
    logger.info("compaction tick %s: the deltas reach revision %d, %d past %s: compaction job %s", tick.isoformat(),
                last, last - metadata.revision, base, job.id)
    return job


STANDBY_BEHIND = 3
"""A standby stores a compacted backup every compact-after-revisions revisions, between two deltas: with deltas this
many times that past the newest backup, it is not keeping up (or not there), and a compaction job is queued."""


def _standby_alive(connection: redis.Redis) -> bool:
    """Whether a standby holds its lease. A lease key with no TTL or a longer one than a standby sets is no
    standby's (whoever can write Redis set it): it stops no compaction."""
    from worker.standby import LEASE_KEY, LEASE_TTL

    return 0 < connection.pttl(LEASE_KEY) <= LEASE_TTL * 1000


def compacts(config: Config) -> bool:
    """Whether the config has the scheduler queue compactions (deltas on, compact-after-revisions not 0)."""
    return config.deltas and config.compact_after_revisions > 0


def _unchanged_since(config: Config, connection: redis.Redis) -> str | None:
    """The newest backup's name if etcd's revision is still the one its snapshot holds, else None."""
    store = open_store(config)
    name = backups.newest(store.list_backups(), redis_clock(connection)())
    newest = store.read_metadata(name) if name is not None else None
    if newest is None:
        return None
    try:
        with etcd.connect(config.etcd) as member:
            revision = member.proof.cluster_revision
    except etcd.EtcdUnavailable as exc:
        logger.warning("skip-unchanged cannot read etcd's revision, backing up anyway: %s", exc)
        return None
    # A snapshot whose exact revision is unknown (writes while it streamed) is not proof enough.
    return newest.filename if revision == newest.snapshot_revision() else None


TickAction = Callable[[Config, redis.Redis, datetime, str], "Job | None"]


class Tick(CronJob):
    """RQ's CronJob for one of the config's cron expressions, read in UTC, whose enqueue() is `action`."""

    def __init__(self, config: Config, scheduler: str, cron: str, action: TickAction, job: str) -> None:
        self.config = config
        self.scheduler = scheduler
        self.action = action
        super().__init__(queue_name=QUEUE_NAME, func_name=job, cron=cron, name=job)

    def get_next_enqueue_time(self) -> datetime:
        assert self.cron is not None  # every Tick is built with one (RQ's CronJob may have an interval instead)
        return next_fire(self.cron, self.latest_enqueue_time or datetime.now(UTC))

    def enqueue(self, connection: redis.Redis) -> Job | None:  # type: ignore[override]  # RQ ignores the value
        # next_enqueue_time is still the tick that is due: RQ moves it on after this returns.
        assert self.next_enqueue_time is not None
        return self.action(self.config, connection, self.next_enqueue_time, self.scheduler)


class BackupScheduler(CronScheduler):
    """RQ's cron scheduler with our ticks: backups (`schedule`), restore drills (`drill`), compactions.
    (RQ's register() only builds plain CronJobs from functions.)"""

    def __init__(self, config: Config, connection: redis.Redis) -> None:
        super().__init__(connection, logging_level=logging.INFO)
        if config.schedule is not None:
            self._cron_jobs.append(Tick(config, self.name, config.schedule, run_tick, BACKUP_JOB))
        if config.drill is not None:
            self._cron_jobs.append(Tick(config, self.name, config.drill, run_drill_tick, DRILL_JOB))
        if compacts(config):
            self._cron_jobs.append(Tick(config, self.name, COMPACTION_CHECK, run_compaction_tick, COMPACT_JOB))

    def run_until(self, stop: threading.Event) -> None:
        """start()'s loop for a thread (start() installs signal handlers: the main thread's job)."""
        self.register_birth()
        try:
            while not stop.is_set():
                if self.enqueue_jobs():
                    self.save()
                self.heartbeat()
                stop.wait(self.calculate_sleep_interval())
        finally:
            self.register_death()


def start_thread_scheduler(config: Config, connection: redis.Redis) -> tuple[threading.Thread, threading.Event]:
    """Run the schedule on a daemon thread (the all-in-one process); set the event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=BackupScheduler(config, connection).run_until, args=(stop,),
                              name="backup-scheduler", daemon=True)
    thread.start()
    return thread, stop


def run_scheduler(config: Config) -> None:
    """Run the schedule in this process until SIGTERM/SIGINT (the Procfile's `scheduler`)."""
    connection = connect(config)
    retry_until_redis_answers(connection.ping)
    BackupScheduler(config, connection).start()  # type: ignore[no-untyped-call]
