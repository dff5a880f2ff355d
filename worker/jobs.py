"""RQ job functions, enqueued by the API by dotted path (`common.queue.BACKUP_JOB`).

A job's arguments carry no secrets: the worker that runs a job passes its own config, which holds
etcd's credentials, as the first argument (worker.runner.ConfiguredJob); the arguments stored in
Redis are only those the API enqueued (common.jobs checks them).
"""

from __future__ import annotations

import logging

from rq import get_current_job
from rq.job import Job

from common import queue
from common.clock import redis_clock
from common.config import Config
from common.jobs import backup_result
from common.metadata import BackupMetadata
from common.metrics import record_failure, record_outcome
from common.storage import StorageError, open_store
from recovery.verify import CannotVerify, VerifyError, verify_stored
from recovery.workdir import VERIFY_PREFIX, private_workdir
from worker import backup
from worker.compact import run_compaction
from worker.drill import run_drill
from worker.errors import BackupError
from worker.leases import backup_lock, job_heartbeat

logger = logging.getLogger(__name__)

def take_backup(config: Config) -> dict[str, object]:
    """Take one backup of the cluster; return the file's name and size."""
    job = get_current_job()
    assert job is not None, "take_backup runs only as an RQ job"
    connection = job.connection
    # From here on, new requests queue a new job: this one's snapshot is about to start.
    queue.release_pending(connection, job.id)
    try:
        with job_heartbeat(connection, job.id), backup_lock(connection, token=job.id):
            # Holding the lock, no other backup is writing: any temp file is a dead backup's.
            store = open_store(config)
            store.remove_unpublished(lambda: None)  # ours has not begun
            store.remove_orphan_metadata()
            # Named from Redis' clock, shared by all workers; published in job.meta before rotation.
            result = backup.take_backup(
                config, store, temp_tag=job.id, now=redis_clock(connection),
                published=lambda metadata: queue.record_published(job, _result(metadata)))
    except Exception as exc:
        known = isinstance(exc, BackupError | StorageError)
        if known:  # a known cause, for the API's 500 message
            _record_cause(job, exc)
        # As the API words it: a known cause as it is, anything else as its traceback's last line.
        message = str(exc) if known else f"{type(exc).__name__}: {exc}"
        record_failure(connection, redis_clock(connection)().timestamp(), message)
        raise
    record_outcome(connection, "success", result.duration)
    return _result(result)


def restore_drill(config: Config) -> dict[str, object]:
    """Restore the newest backup into a throwaway etcd and check it (worker.drill)."""
    job = get_current_job()
    assert job is not None, "restore_drill runs only as an RQ job"
    # From here on, drill ticks queue a new drill: this one is about to pick its backup.
    queue.release_pending(job.connection, job.id, queue.DRILL_JOB)
    with job_heartbeat(job.connection, job.id):  # a drill takes minutes: the API must not take it for lost
        result = run_drill(config, job.connection)
    return {"backup": result.backup, "passed": result.passed, "reason": result.reason, "seconds": result.seconds,
            "etcd_version": result.etcd_version}


def compact_backups(config: Config) -> dict[str, object]:
    """Make a compacted backup of the newest backup and its deltas, if due (worker.compact)."""
    job = get_current_job()
    assert job is not None, "compact_backups runs only as an RQ job"
    # From here on, the scheduler's checks queue a new compaction: this one is about to pick its backup.
    queue.release_pending(job.connection, job.id, queue.COMPACT_JOB)
    with job_heartbeat(job.connection, job.id):  # minutes for a big database; its temp file is tagged live by it
        result = run_compaction(config, job.connection, job.id)
    return {"backup": result.backup, "reason": result.reason, "seconds": result.seconds, "events": result.events}


def verify_backup(config: Config, filename: str) -> dict[str, object]:
    """Check backup `filename` as `etcd-backup verify` does (recovery.verify); raise VerifyError if bad."""
    job = get_current_job()
    assert job is not None, "verify_backup runs only as an RQ job"
    # From here on, requests to verify this backup queue a new check: this one is about to read it.
    queue.release_pending(job.connection, job.id, queue.VERIFY_JOB, (filename,))
    store = open_store(config)
    try:
        # A big backup takes a while to check: the heartbeat tells the API the worker is still at it.
        with job_heartbeat(job.connection, job.id), private_workdir(VERIFY_PREFIX) as work:
            verified = verify_stored(store, filename, work, store.read_metadata(filename), config.identity_file)
    except (CannotVerify, StorageError) as exc:  # the store could not be read: no verdict
        job.meta[queue.UNCHECKED_META] = True
        _record_cause(job, exc)
        raise
    except VerifyError as exc:
        _record_cause(job, exc)
        raise
    # total_keys is etcd's own count (`snapshot status`: its internal keys and every revision kept), as the API always
    # answered it; user_keys, what a client sees.
    return {"filename": filename, "revision": verified.revision, "total_keys": verified.total_keys,
            "user_keys": verified.user_keys, "total_size": verified.total_size, "hash": verified.hash,
            "db_sha256": verified.db_sha256}


def _result(metadata: BackupMetadata) -> dict[str, object]:
    return backup_result(metadata.filename, metadata.filesize, metadata.stale)


def _record_cause(job: Job, exc: Exception) -> None:
    """Put a failure's known cause where the API finds it for its answer (job.meta)."""
    job.meta[queue.ERROR_META] = str(exc)
    job.save_meta()  # type: ignore[no-untyped-call]
