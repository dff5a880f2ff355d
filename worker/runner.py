"""Run RQ workers for the backup queue: a process of its own, or a thread of the all-in-one server."""

from __future__ import annotations

import logging
import threading

import redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from common import backups, queue
from common.config import Config
from worker import jobs
from worker.lock import backup_lock

logger = logging.getLogger(__name__)


class BackupWorker(SimpleWorker):
    """Runs jobs in the worker process itself, without fork(): a backup needs no isolation, and a
    forked child per job would add its start-up to every POST's round trip."""


class ThreadWorker(BackupWorker):
    """A worker that runs off the main thread, where signal handlers cannot be installed."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        pass


def prepare(config: Config, connection: redis.Redis) -> None:
    """Install the config for jobs and remove temp files that a crashed backup left behind."""
    jobs.configure(config)
    # Only while no backup runs anywhere may temp files be taken for leftovers.
    with backup_lock(connection, blocking=False) as acquired:
        if acquired:
            backups.remove_temp_files(config.backup_dir)
        else:
            logger.info("a backup is running elsewhere; leftover temp files are left for later")


def run_worker(config: Config) -> None:
    """Work the backup queue in this process until SIGTERM/SIGINT (finishing the current backup)."""
    connection = queue.connect(config)
    prepare(config, connection)
    worker = BackupWorker([queue.backup_queue(connection)], connection=connection, serializer=JSONSerializer)
    worker.work(logging_level="INFO")


def start_thread_worker(config: Config, connection: redis.Redis) -> threading.Thread:
    """Start a worker thread on `connection` (the all-in-one server's embedded queue)."""
    prepare(config, connection)
    worker = ThreadWorker([queue.backup_queue(connection)], connection=connection, serializer=JSONSerializer)
    thread = threading.Thread(target=worker.work, kwargs={"logging_level": "INFO"}, name="rq-worker", daemon=True)
    thread.start()
    return thread
