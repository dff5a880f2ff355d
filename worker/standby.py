"""The standby: a throwaway etcd that follows the stored deltas as the watcher stores them, and a compacted backup
stored from it every `compact-after-revisions` revisions (issue 26), so that a point-in-time restore to any revision
applies at most about that many revisions' events (plus the standby's lag behind the watcher).

Why not the compaction job alone (worker.compact): each job restores its base and applies every delta since, so
its work is a whole restore each time, and at a high write rate the deltas written meanwhile outgrow what it
reached (measured: bench.window). The standby restores once, applies each delta once, as it is stored, and a
compacted backup then costs etcd's compaction, its defragmentation and the snapshot's archive.

What it applies is what a restore would: the newest backup (by revision: recovery.pitr.base_backup), verified,
then the deltas that follow it without a break (recovery.pitr.stored_after: the same chain checks), each batch
tied to the revision the throwaway etcd is at (recovery.pitr.apply_plan), one Txn per original revision, every
lease kept alive for as long as it runs. Its compacted backups are made as worker.compact makes them
(store_compacted): compacted at the revision before the reached one, defragmented, archived, signed, published
under the backup lock; retention then runs as after any backup. Production etcd is never asked for anything: the
standby reads the store alone.

One standby at a time (a Redis lease, as the delta watcher's: a second waits for it to lapse); while one holds it,
the scheduler queues no compaction job (scheduler.cron), which would compact the same deltas again, unless the
deltas reach 3 x compact-after-revisions past the newest backup (no standby keeps up so far behind). When the deltas
break (a missing or damaged delta), it keeps what it has and waits for a backup past the break, then starts again
from it; anything else that fails it (the store, the throwaway etcd, two histories) ends the run, and it starts
again from the newest backup RETRY_SECONDS later (twice as long after each failure in a row, up to
MAX_RETRY_SECONDS). A base named in the future (Redis' clock, set back since it named
it) ends the run too, and it starts again at once from the newest backup not in the future: no compacted backup
could be named after that base until the clock caught up.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace

import redis
from redis.exceptions import LockError

from common import backups, etcd, retention
from common.clock import redis_clock
from common.config import Config
from common.deltas import DeltaError, parse_delta_name
from common.encryption import Identity
from common.metadata import BackupMetadata
from common.storage import BackupStore, StorageError, open_store
from recovery.pitr import (
    END_OF_DELTAS,
    MEMORY_DIR,
    LeasesKeptAlive,
    Plan,
    applied_in_throwaway,
    apply_plan,
    base_backup,
    identities_of,
    stored_after,
)
from recovery.restore import RestoreError
from recovery.verify import CannotVerify, VerifyError
from recovery.workdir import COMPACT_PREFIX, private_workdir, remove_abandoned_workdirs
from worker.compact import Compaction, NotCompacted, compacted_name, store_compacted
from worker.deltas import return_large_buffers
from worker.errors import BackupError
from worker.leases import clear_unexpiring_lease, job_heartbeat, renewing

logger = logging.getLogger(__name__)

LEASE_KEY = "etcd-backup:standby"
LEASE_TTL = 30.0
"""Seconds the lease outlives a standby that stopped renewing it (killed, cut off from Redis)."""
POLL_SECONDS = 2.0
"""How often the standby lists the store for new deltas (a listing: one request to S3)."""
RETRY_SECONDS = 60.0
MAX_RETRY_SECONDS = 600.0
"""After each failure in a row the standby waits twice as long to start again, up to this."""
"""How long a standby waits before starting again after a failure (each start restores the newest backup)."""
FAILURES = (RestoreError, VerifyError, CannotVerify, BackupError, StorageError, DeltaError, redis.RedisError)


class LeaseLost(Exception):
    """Another standby holds the lease now: this one must stop."""


@dataclass(frozen=True)
class Followed:
    """Where the standby's throwaway etcd is."""

    base: str
    base_metadata: BackupMetadata
    """The backup it was restored from, or the compacted backup it last stored."""
    reached: int
    """The revision it is at."""
    last_delta: str | None
    """The last delta applied (it holds `reached`), if any since `base`."""
    tried: int = 0
    """The revision a compaction was last tried at and not stored (NotCompacted): tried again past it only."""


def run_standby(config: Config, connection: redis.Redis, stop: threading.Event) -> None:
    """Follow the deltas and store compacted backups until `stop` is set, whenever this process holds the lease."""
    if not config.deltas or config.compact_after_revisions == 0:
        logger.warning("standby: the config has %s: nothing to do, idle until stopped",
                       "no deltas" if not config.deltas else "compact-after-revisions 0")
        stop.wait()
        return
    return_large_buffers()  # as the watcher: a delta's big buffers go back to the system once freed
    lease = connection.lock(LEASE_KEY, timeout=LEASE_TTL, thread_local=False)
    failures = 0
    token = f"standby-{uuid.uuid4().hex}"
    """The backup lock's token while a compacted backup is stored, with a heartbeat of its own (worker.leases)."""
    while not stop.is_set():
        try:
            if clear_unexpiring_lease(connection, LEASE_KEY, LEASE_TTL):
                logger.warning("standby: %s had no TTL (or one past %gs): not a live standby's lease (set by hand?); "
                               "deleted it", LEASE_KEY, LEASE_TTL)
            if not lease.acquire(blocking=False):
                stop.wait(LEASE_TTL / 3)
                continue
        except redis.RedisError as exc:
            logger.error("standby: Redis: %s; trying again in %g s", exc, RETRY_SECONDS)
            stop.wait(RETRY_SECONDS)
            continue
        logger.info("standby: holding the lease")
        began = time.monotonic()
        try:
            with renewing(lease.reacquire, LEASE_TTL / 3, "the standby's lease"), job_heartbeat(connection, token):
                _follow(config, connection, token, lease, stop)
        except LeaseLost:
            logger.warning("standby: another standby holds the lease now: stopped following")
        except FAILURES as exc:
            # Each start restores the whole database: a failure that stays (two histories, an identity missing)
            # must not have it do so every minute. A run that lasted counts as a fresh start.
            failures = 0 if time.monotonic() - began > MAX_RETRY_SECONDS else failures
            delay = min(RETRY_SECONDS * 2**failures, MAX_RETRY_SECONDS)
            failures += 1
            logger.error("standby: %s; starting again from the newest backup in %g s", exc, delay)
            stop.wait(delay)
        finally:
            try:
                lease.release()
            except (LockError, redis.RedisError):
                pass


def _follow(config: Config, connection: redis.Redis, token: str, lease: redis.lock.Lock,
            stop: threading.Event) -> None:
    """Restore the newest backup with the deltas after it into a throwaway etcd, then follow the deltas as they are
    stored, storing a compacted backup every compact-after-revisions revisions, until `stop`, a lost lease or a
    break in the deltas past which a newer backup starts."""
    remove_abandoned_workdirs()  # a standby killed outright left its directories (and their etcd) behind
    if MEMORY_DIR.is_dir():
        remove_abandoned_workdirs(MEMORY_DIR)
    store = open_store(config)
    identities = identities_of(config.identity_file)
    base, metadata = base_backup(store, END_OF_DELTAS, redis_clock(connection)())
    deltas, reached, _ = _next_batch(store, metadata.revision, metadata.revision, config, identities)
    logger.info("standby: restoring %s (revision %d) and %d deltas after it", base, metadata.revision, len(deltas))
    plan = Plan(base, metadata, deltas, reached)
    with private_workdir(COMPACT_PREFIX) as work, \
            applied_in_throwaway(config, store, plan, work, config.identity_file, logger.info) as (member, _), \
            LeasesKeptAlive(member) as leases:
        followed = Followed(base, metadata, reached, deltas[-1] if deltas else None)
        said = ""
        while not stop.is_set():
            if not lease.owned():
                raise LeaseLost
            if _due(config, followed):
                if backups.is_future(followed.base, redis_clock(connection)()):
                    # Redis' clock was ahead when it was named, and was set back since: each compacted backup is
                    # named after its base, so none could be stored until the clock caught up (an hour's skew: an
                    # hour), and restores and retention skip it meanwhile. The newest backup not in the future
                    # is where a compaction job would start.
                    logger.warning("standby: %s, which it follows, is named in the future now (Redis' clock was "
                                   "ahead, and was set back): starting again from the newest backup", followed.base)
                    return
                followed = _store(config, store, connection, token, member, leases, followed, identities)
            deltas, reached, broken = _next_batch(store, followed.reached, followed.base_metadata.revision, config,
                                                  identities)
            if deltas:
                began = time.monotonic()
                try:
                    events = apply_plan(member, store, Plan(followed.base, followed.base_metadata, deltas, reached),
                                        identities, leases)
                except RestoreError as exc:
                    # Retention deletes the deltas before the oldest kept backup: a standby behind a newer backup
                    # may find the next gone. It starts again from that backup now, not a minute later.
                    if (newer := _newer_backup(store, connection, followed.reached)) is None:
                        raise
                    logger.warning("standby: %s; starting again from %s", exc, newer)
                    return
                logger.info("standby: applied %d events of %d deltas in %.1f s: at revision %d", events, len(deltas),
                            time.monotonic() - began, reached)
                followed = replace(followed, reached=reached, last_delta=deltas[-1])
                continue
            if broken:
                newer = _newer_backup(store, connection, reached)
                if newer is not None:
                    logger.warning("standby: the deltas break after revision %d (%s): starting again from %s",
                                   reached, broken, newer)
                    return
                if broken != said:
                    logger.warning("standby: the deltas break after revision %d (%s): waiting for a backup past it",
                                   reached, broken)
            said = broken
            stop.wait(POLL_SECONDS)


def _due(config: Config, followed: Followed) -> bool:
    return followed.last_delta is not None and followed.reached > followed.tried \
        and followed.reached - followed.base_metadata.revision >= config.compact_after_revisions


def _next_batch(store: BackupStore, reached: int, base_revision: int, config: Config,
                identities: list[Identity]) -> tuple[list[str], int, str]:
    """The deltas that follow revision `reached` without a break, whole, up to the one that takes the throwaway etcd
    compact-after-revisions past `base_revision` (a backlog is compacted on the way, not once at its end, and only
    between two deltas: the next batch's first delta is tied to the revision compacted at), the revision they reach,
    and why they stop there if a missing or damaged delta stops them."""
    # Past the revision reached at least: a compacted backup not stored at it (NotCompacted) is tried at the next.
    until = max(base_revision + config.compact_after_revisions, reached + 1)
    deltas, reached, broken = stored_after(store, reached, identities, until)
    if deltas:
        said = parse_delta_name(deltas[-1])
        assert said is not None, deltas[-1]
        reached = max(reached, said.last)  # read and checked whole; the apply checks it lands on this revision
    return deltas, reached, broken


def _store(config: Config, store: BackupStore, connection: redis.Redis, token: str, member: etcd.EtcdConnection,
           leases: LeasesKeptAlive, followed: Followed, identities: list[Identity]) -> Followed:
    """Store the throwaway etcd as a compacted backup; where the standby is then (its new base), or, if it could not
    be stored now (NotCompacted: its name taken, or in the future), where it was, not tried again at this revision."""
    assert followed.last_delta is not None
    began = time.monotonic()
    try:
        name, received = compacted_name(config, store, connection, followed.base, followed.last_delta,
                                        followed.reached, identities)
    except NotCompacted as exc:
        logger.warning("standby: compacted backup at revision %d: %s", followed.reached, exc)
        return replace(followed, tried=followed.reached)
    compaction = Compaction(name, received, followed.base, followed.base_metadata, followed.reached, began)
    metadata = store_compacted(config, store, connection, token, member, leases, compaction)
    retention.prune(store, redis_clock(connection)(), config.rotate, config.retention, protect=name)
    logger.info("standby: compacted backup %s: %s and the revisions %d-%d, %d bytes, %d keys, database %d bytes, "
                "in %.1f s", name, followed.base, followed.base_metadata.revision + 1, followed.reached,
                metadata.filesize, metadata.key_count, metadata.db_size, time.monotonic() - began)
    return Followed(name, metadata, followed.reached, None)


def _newer_backup(store: BackupStore, connection: redis.Redis, reached: int) -> str | None:
    """The newest backup, if it is past revision `reached` (where the deltas break)."""
    try:
        newest, metadata = base_backup(store, END_OF_DELTAS, redis_clock(connection)())
    except RestoreError:
        return None
    return newest if metadata.revision > reached else None
