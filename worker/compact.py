"""Compacted backups: a full backup and the deltas after it, made into a new full backup by the worker, so that a
point-in-time restore applies at most about `compact-after-revisions` revisions' events whatever the time since
the last backup taken from etcd (issue 26). Production etcd is never asked for anything.

The newest backup (taken from etcd, or compacted) is restored into a throwaway etcd and the deltas after it are
applied there up to the newest revision they reach without a break, exactly as `etcd-backup restore --to-revision`
does (recovery.pitr.applied_in_throwaway: the same checks tie the first delta to the backup). Then its MVCC history
is compacted and its database defragmented, so that a compacted backup holds the keyspace, not every revision
since the first backup, and does not grow with the history. It compacts at the revision before the reached one:
etcd's compaction drops a key deleted at the compaction revision itself (a tombstone), and the next restore from
this backup watches the reached revision's events to tie the next delta to it (recovery.pitr's
_check_follows_backup).

The snapshot is archived like any backup (worker.backup's streaming archive: gzip, age encryption, the signature of
its metadata with `signing`) as `snapshot-<time>.compacted.tar.gz`: <time> is when the watcher received the
reached revision (or a second after the base's, if that is later), so that the order of names is the order of
revisions. Its metadata records the reached revision
(revision = revision_at_end), the key count there, the backup it was made from (`compacted_from`) and the range of
delta revisions applied (`compacted_revisions`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import redis
from etcd3 import etcdrpc

from common import backups, etcd, retention
from common.clock import redis_clock
from common.config import Config
from common.deltas import DeltaError, parse_delta_name
from common.encryption import Identity
from common.metadata import MAX_DURATION, BackupMetadata
from common.phases import Phases
from common.storage import BackupStore, StorageError, open_store
from recovery.pitr import (
    END_OF_DELTAS,
    LeasesKeptAlive,
    Plan,
    applied_in_throwaway,
    base_backup,
    head_revision,
    identities_of,
    read_delta,
    stored_after,
)
from recovery.restore import RestoreError
from recovery.verify import CannotVerify, VerifyError
from recovery.workdir import COMPACT_PREFIX, private_workdir
from worker.backup import stream_archive
from worker.errors import BackupError
from worker.leases import backup_lock

logger = logging.getLogger(__name__)

BACKOFF_KEY = "etcd-backup:compaction-backoff"
"""Set (with BACKOFF_SECONDS' TTL) by a compaction that failed or found nothing to do although due: the scheduler
queues none while it is there, so that a broken chain or a missing identity does not restore the whole database
every 10 seconds."""
BACKOFF_SECONDS = 600
TIMEOUT = 600.0
"""Seconds etcd's compaction, its defragmentation, or the key count may take in the throwaway etcd (a few seconds
for a 300 MB database on the README's machine)."""


class NotCompacted(Exception):
    """Nothing wrong, but no compacted backup now; the message says why."""


@dataclass(frozen=True)
class CompactionResult:
    backup: str | None
    """The compacted backup stored, or None (not due, or failed: see reason)."""
    reason: str
    seconds: float
    events: int = 0
    """Events applied to the base backup."""


def due(config: Config, store: BackupStore, now: datetime) -> tuple[str, BackupMetadata, int] | None:
    """The newest backup to compact from (taken from etcd, or compacted), its metadata and the last revision the
    stored deltas hold, when that is at least `compact-after-revisions` past it; else None. Reads names and one
    metadata file only (a delta's name carries its revisions): the scheduler asks every minute."""
    if not config.deltas or config.compact_after_revisions == 0:
        return None
    if config.encryption is not None and config.identity_file is None:  # the base cannot be opened: never due
        return None
    try:
        base, metadata = base_backup(store, END_OF_DELTAS, now)
    except RestoreError:  # no backup with metadata yet: nothing to start from
        return None
    last = max((said.last for name in store.list_deltas() if (said := parse_delta_name(name)) is not None),
               default=0)
    return (base, metadata, last) if last - metadata.revision >= config.compact_after_revisions else None


def run_compaction(config: Config, connection: redis.Redis, job_id: str) -> CompactionResult:
    """Compact the newest backup and its deltas into a compacted backup if it is due (`due`); say what was done."""
    began = time.monotonic()
    store = open_store(config)
    clock = redis_clock(connection)
    found = due(config, store, clock())
    if found is None:
        return CompactionResult(None, "not due: the deltas after the newest backup are fewer than "
                                      f"compact-after-revisions ({config.compact_after_revisions}) revisions", 0.0)
    base, metadata, _ = found
    try:
        name, events = _compact(config, store, connection, job_id, base, metadata, began)
    except NotCompacted as exc:
        logger.warning("compaction of %s: %s; the next in %d s at the earliest", base, exc, BACKOFF_SECONDS)
        connection.set(BACKOFF_KEY, str(exc)[:500], ex=BACKOFF_SECONDS)
        return CompactionResult(None, f"compaction of {base}: {exc}", round(time.monotonic() - began, 3))
    except (RestoreError, VerifyError, CannotVerify, BackupError, StorageError) as exc:
        logger.error("compaction of %s failed: %s; the next in %d s at the earliest", base, exc, BACKOFF_SECONDS)
        connection.set(BACKOFF_KEY, str(exc)[:500], ex=BACKOFF_SECONDS)
        return CompactionResult(None, f"compaction of {base} failed: {exc}", round(time.monotonic() - began, 3))
    seconds = round(time.monotonic() - began, 3)
    retention.prune(store, clock(), config.rotate, config.retention, protect=name)
    return CompactionResult(name, f"compacted {base} and {events} events of deltas after it", seconds, events)


def _compact(config: Config, store: BackupStore, connection: redis.Redis, job_id: str, base: str,
             metadata: BackupMetadata, began: float) -> tuple[str, int]:
    identities = identities_of(config.identity_file)
    deltas, reached, _ = stored_after(store, metadata.revision, identities)  # compacted no further than a break
    last = parse_delta_name(deltas[-1]) if deltas else None
    if last is None or last.last != reached or reached - metadata.revision < config.compact_after_revisions:
        raise NotCompacted(f"the deltas after it break at revision {reached}, fewer than compact-after-revisions "
                           "past it (a missing or damaged delta): not compacted")
    name, received = compacted_name(config, store, connection, base, deltas[-1], reached, identities)
    plan = Plan(base, metadata, deltas, reached)
    with private_workdir(COMPACT_PREFIX) as work, \
            applied_in_throwaway(config, store, plan, work, config.identity_file, logger.info) as (member, events):
        with LeasesKeptAlive(member) as leases:
            compacted = store_compacted(config, store, connection, job_id, member, leases,
                                        Compaction(name, received, base, metadata, reached, began))
    logger.info("compacted backup %s: %s and %d events of %d deltas (revisions %d-%d), %d bytes, %d keys, "
                "database %d bytes, in %.1f s", name, base, events, len(deltas), metadata.revision + 1, reached,
                compacted.filesize, compacted.key_count, compacted.db_size, time.monotonic() - began)
    return name, events


def compacted_name(config: Config, store: BackupStore, connection: redis.Redis, base: str, last_delta: str,
                   reached: int, identities: list[Identity]) -> tuple[str, datetime]:
    """The name of the compacted backup of `base` and the deltas up to revision `reached` (held by `last_delta`),
    and the moment the watcher received that revision (its `started`); NotCompacted if it cannot be stored now.

    Named after the second the watcher received the reached revision, and at least a second after its base: within
    the base's second a compacted name sorts first, and the next compaction, retention and a restore would take the
    base for the newer. `received` is the exact moment (the delta's record of it, not its name's second rounded
    down): --to-time counts the backup's revision as received at its `started`, and an earlier `started` would let
    a restore to a time just before that write bring it back."""
    base_time = backups.backup_time(base)
    assert base_time is not None, base
    received = max(_received_at(store, last_delta, reached, identities), base_time + timedelta(seconds=1))
    name = backups.backup_name(received, encrypted=config.encryption is not None, compacted=True)
    if name in store.taken_names():
        raise NotCompacted(f"{name} is taken (a compaction of that second): not compacted now")
    if backups.is_future(name, redis_clock(connection)()):
        raise NotCompacted(f"{name} would be named in the future (the watcher's clock is ahead): not compacted now")
    return name, received


@dataclass(frozen=True)
class Compaction:
    name: str
    """The compacted backup's name (compacted_name)."""
    received: datetime
    """When the watcher received `reached` (compacted_name): the backup's `started`."""
    base: str
    base_metadata: BackupMetadata
    """The backup the throwaway etcd was restored from, or the compacted backup it was last compacted into."""
    reached: int
    """The revision the throwaway etcd is at."""
    began: float
    """time.monotonic() when the work began (its duration is recorded)."""


def store_compacted(config: Config, store: BackupStore, connection: redis.Redis, token: str,
                    member: etcd.EtcdConnection, leases: LeasesKeptAlive, compaction: Compaction) -> BackupMetadata:
    """Compact the throwaway etcd of `member` (at `compaction.reached`, its leases kept alive by `leases`) and store
    its snapshot as `compaction.name`, authenticated like any backup; return its metadata. `token`: the backup
    lock's (a job id with a live heartbeat)."""
    metadata, reached = compaction.base_metadata, compaction.reached
    try:
        key_count = _compact_member(member, reached, leases)
        # The lock, as a backup's: a backup that starts meanwhile removes every temp file not the holder's.
        with backup_lock(connection, token=token), store.new_backup(compaction.name, token) as pending:
            snapshot, archive = stream_archive(member, pending, compaction.received, config, Phases())
            _check_still_at(member, reached)
            assert snapshot.db_sha256 is not None, "the archive is written only once the snapshot is verified"
            compacted = BackupMetadata(
                filename=compaction.name, filesize=archive.size, archive_sha256=archive.sha256,
                cluster_id=metadata.cluster_id, member_id=metadata.member_id, endpoint=metadata.endpoint,
                revision=reached, revision_at_end=reached, etcd_version=member.status.version,
                db_size=snapshot.data_size, db_sha256=snapshot.db_sha256, started=compaction.received.isoformat(),
                duration=round(min(time.monotonic() - compaction.began, MAX_DURATION), 3), key_count=key_count,
                recipients=list(config.encryption.recipients) if config.encryption is not None else None,
                compacted_from=compaction.base, compacted_revisions=[metadata.revision + 1, reached])
            pending.publish(compacted)
    except grpc.RpcError as exc:
        raise RestoreError(f"the throwaway etcd failed: {etcd.describe_rpc_error(exc, TIMEOUT)}") from None
    return compacted


def _received_at(store: BackupStore, name: str, reached: int, identities: list[Identity]) -> datetime:
    """When the watcher received revision `reached`, as delta `name` (which holds it) records it."""
    try:
        seen = [revision.seen for revision in read_delta(store, name, identities, events=False).revisions
                if revision.number == reached]
    except DeltaError as exc:
        raise NotCompacted(f"{exc} (it was intact a moment ago)") from None
    if not seen:
        raise NotCompacted(f"{name} does not hold revision {reached}, which its name says it holds")
    return datetime.fromtimestamp(seen[0], UTC)


def _compact_member(member: etcd.EtcdConnection, reached: int, leases: LeasesKeptAlive) -> int:
    """Drop the throwaway etcd's history before `reached` (keeping that revision's events: see the module's
    docstring) and its leases without keys (LeasesKeptAlive.revoke_keyless), give the freed pages back
    (defragment), and count its keys at `reached`."""
    leases.revoke_keyless()
    kv = etcdrpc.KVStub(member.channel)
    if reached > 1:
        kv.Compact(etcdrpc.CompactionRequest(revision=reached - 1, physical=True), metadata=member.metadata,
                   timeout=TIMEOUT)
    etcdrpc.MaintenanceStub(member.channel).Defragment(etcdrpc.DefragmentRequest(), metadata=member.metadata,
                                                       timeout=TIMEOUT)
    return member.key_count(reached, TIMEOUT)


def _check_still_at(member: etcd.EtcdConnection, reached: int) -> None:
    """The snapshot holds `reached` only if nothing wrote to the throwaway etcd (an expired lease) before it began:
    its revision afterwards says so."""
    if (now := head_revision(member)) != reached:
        raise BackupError(f"the throwaway etcd moved from revision {reached} to {now} by itself "
                          "(an expiring lease?): not stored")
