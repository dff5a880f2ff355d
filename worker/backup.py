"""One backup, start to finish: snapshot etcd, verify, archive, rotate. Knows nothing of RQ."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from datetime import datetime, timedelta

import grpc
from etcd3 import etcdrpc

from common import backups, etcd, retention
from common.clock import Clock, local_now
from common.config import Config
from common.metadata import BackupMetadata
from common.phases import Phases
from common.storage import BackupStore, PendingBackup, StorageError
from worker.archive import WrittenArchive, write_archive
from worker.errors import BackupError
from worker.pipeline import Stalled, read_ahead
from worker.snapshot import VerifiedSnapshot

logger = logging.getLogger(__name__)

BATCH_BYTES = 256 << 10
"""The snapshot goes from the reading thread to the compressing one in pieces of this size (8 of etcd's
32 KiB messages): a handoff and a gzip call cost the same whatever the piece's size."""
READ_AHEAD_PIECES = 8
"""Pieces received ahead of the compressor: 2 MiB at most in memory."""
STALL_SECONDS = 15.0
"""A snapshot stream that sends nothing for this long fails the backup: etcd streams its database
without pauses, and gRPC's keepalive alone takes about a minute to notice a frozen peer."""


def take_backup(config: Config, store: BackupStore, temp_tag: str, now: Clock = local_now,
                published: Callable[[BackupMetadata], object] = lambda metadata: None,
                phases: Phases | None = None) -> BackupMetadata:
    """Take one backup into `store`; raise BackupError naming the cause. The caller holds the backup lock.

    `temp_tag` (the job's id) marks the unpublished backup as this job's. `now` is the clock that names
    the backup and ages the others (common.clock: Redis' when there are workers). `published(metadata)`
    runs as soon as the backup is listed, before rotation: whatever happens after, the backup exists.
    `phases` receives the time of each phase (common.phases; logged at debug level either way).
    """
    phases = Phases() if phases is None else phases
    with phases("connect and currency proof"):
        connection, stale = _member(config)
    with connection:
        state = connection.currency or etcd.unproven_state(connection.status)
        with phases("name"):
            started, name = _fresh_name(store, now, stale=stale is not None, encrypted=config.encryption is not None)
        # `started` + `duration` is when the backup was complete, by the clock that named it (the
        # success gauge in /metrics): both are measured from the same instant.
        began = time.monotonic()
        with _failures_named(connection, config), store.new_backup(name, temp_tag) as pending:
            # The snapshot starts after the linearizable read that gave this revision: it holds at least it.
            # The count, at that same revision, is etcd's work while the snapshot streams rather than before.
            with _counting_keys(connection, state.cluster_revision, config, phases) as key_count, \
                    phases("stream (all of it)"):
                snapshot, archive = stream_archive(connection, pending, started, config, phases)
            with phases("metadata"):
                metadata = _metadata(connection, state, config, snapshot, archive, started, key_count.result(),
                                     duration=time.monotonic() - began, name=name, stale=stale)
            with phases("publish (fsync, metadata, signing, link)"):
                pending.publish(metadata)
    published(metadata)
    # One line per backup, never a secret: what an operator greps for.
    logger.info("backup %s: %d bytes in %.2fs, revision %d from %s", name, metadata.filesize, metadata.duration,
                metadata.revision, metadata.endpoint)
    # Rotation and retention run only now that the new backup is complete and durable.
    with phases("rotation"):
        retention.prune(store, now(), config.rotate, config.retention, protect=name)
    logger.debug("backup %s phases: %s", name, phases)
    return metadata


def _member(config: Config) -> tuple[etcd.EtcdConnection, str | None]:
    """A connection to the first endpoint that proves current (common.etcd.connect). With allow-stale-member,
    failing that, one to the first that answers without a leader, and why it is stale (no member is current)."""
    try:
        return etcd.connect(config.etcd), None
    except etcd.EtcdUnavailable as exc:
        if not config.allow_stale_member:
            raise BackupError(str(exc)) from None
        why = str(exc)
    try:
        connection = etcd.connect_leaderless(config.etcd)
    except etcd.EtcdUnavailable as exc:
        raise BackupError(f"{why}; and for a stale backup (allow-stale-member), {exc}") from None
    logger.warning("taking a stale backup from %s (allow-stale-member): %s", connection.endpoint, why)
    return connection, why


def stream_archive(connection: etcd.EtcdConnection, pending: PendingBackup, started: datetime,
                    config: Config, phases: Phases) -> tuple[VerifiedSnapshot, WrittenArchive]:
    """Stream the member's snapshot, checked, into the archive of `pending`."""
    responses = connection.snapshot()
    with _first_message_deadline(responses), phases("first message"):
        snapshot = VerifiedSnapshot(responses, phases, batch_bytes=BATCH_BYTES)
    # The stream is received and checked on a thread of its own while this one compresses and writes.
    with closing(read_ahead(iter(snapshot), READ_AHEAD_PIECES, cancel=responses.cancel,
                            idle_timeout=STALL_SECONDS, phases=phases)) as received:
        archive = write_archive(pending, pending.name, started, snapshot.size, received, config.gzip_level,
                                recipients=config.encryption.recipients if config.encryption is not None else (),
                                phases=phases)
    return snapshot, archive


def _metadata(connection: etcd.EtcdConnection, currency: etcd.Currency, config: Config, snapshot: VerifiedSnapshot,
              archive: WrittenArchive, started: datetime, key_count: tuple[int | None, str | None], duration: float,
              name: str, stale: str | None) -> BackupMetadata:
    status = connection.status
    assert snapshot.db_sha256 is not None, "the archive is written only once the snapshot is verified"
    return BackupMetadata(
        filename=name, filesize=archive.size, archive_sha256=archive.sha256,
        cluster_id=f"{status.header.cluster_id:x}", member_id=f"{status.header.member_id:x}",
        endpoint=connection.endpoint, revision=currency.cluster_revision, etcd_version=status.version,
        db_size=snapshot.data_size, db_sha256=snapshot.db_sha256, started=started.isoformat(),
        duration=round(duration, 3), key_count=key_count[0], key_count_error=key_count[1],
        revision_at_end=_revision_now(connection, config), leader=currency.is_leader,
        raft_term=currency.raft_term, raft_index=currency.raft_index, alarms=list(currency.alarms), stale=stale,
        recipients=list(config.encryption.recipients) if config.encryption is not None else None,
    )


@contextmanager
def _failures_named(connection: etcd.EtcdConnection, config: Config) -> Iterator[None]:
    """Turn what can fail while streaming into a BackupError that names the cause."""
    try:
        yield
    except grpc.RpcError as exc:
        cause = etcd.describe_rpc_error(exc, config.etcd.timeout)
        raise BackupError(f"snapshot stream from {connection.endpoint} failed: {cause}") from None
    except Stalled as exc:
        raise BackupError(f"snapshot stream from {connection.endpoint} stalled: {exc}") from None
    except StorageError as exc:
        raise BackupError(str(exc)) from None


@contextmanager
def _first_message_deadline(responses: etcd.SnapshotStream) -> Iterator[None]:
    """Cancel the stream if its first message takes longer than STALL_SECONDS (read_ahead's idle
    timeout watches the messages after it), and say so: Stalled, not gRPC's "cancelled"."""
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        responses.cancel()

    timer = threading.Timer(STALL_SECONDS, expire)
    timer.start()
    try:
        yield
    except grpc.RpcError:
        if fired.is_set():
            raise Stalled(STALL_SECONDS) from None
        raise
    finally:
        timer.cancel()


@contextmanager
def _counting_keys(connection: etcd.EtcdConnection, revision: int, config: Config,
                   phases: Phases) -> Iterator[Future[tuple[int | None, str | None]]]:
    """Count etcd's keys at `revision` (_key_count) on a thread of its own while the block runs; the count has
    ended when the block's context does, whatever the block raised (it is bounded by etcd's timeout)."""

    def count() -> tuple[int | None, str | None]:
        with phases("key count (beside the stream)"):
            return _key_count(connection, revision, config)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="key-count") as executor:
        yield executor.submit(count)


def _key_count(connection: etcd.EtcdConnection, revision: int, config: Config) -> tuple[int | None, str | None]:
    """The key count for the metadata (a restore drill checks it), or why it could not be had: a
    backup does not fail for want of it."""
    try:
        return connection.key_count(revision, config.etcd.timeout), None
    except grpc.RpcError as exc:
        why = etcd.describe_rpc_error(exc, config.etcd.timeout)
        logger.warning("cannot count etcd's keys at revision %d: %s", revision, why)
        return None, why


def _revision_now(connection: etcd.EtcdConnection, config: Config) -> int | None:
    """The member's revision once the snapshot is received: with `revision`, it brackets the snapshot's
    (equal: the snapshot holds exactly that revision). None if the member no longer answers."""
    try:
        status = etcdrpc.MaintenanceStub(connection.channel).Status(
            etcdrpc.StatusRequest(), metadata=connection.metadata, timeout=config.etcd.timeout)
    except grpc.RpcError as exc:
        logger.warning("cannot read etcd's revision after the snapshot: %s",
                       etcd.describe_rpc_error(exc, config.etcd.timeout))
        return None
    return int(status.header.revision)


def _fresh_name(store: BackupStore, now: Clock, stale: bool, encrypted: bool) -> tuple[datetime, str]:
    """Return the start time and the name of the next backup, a second after the newest backup's (of its
    kind: current or `stale`).

    Names have one-second resolution; two backups must never share one, and the new backup must be
    the newest (rotation keeps the newest). Within a second of the newest, wait for the next second.
    A newest named further ahead (by up to FUTURE_TOLERANCE: a clock that stepped back) is followed
    by the next second's name rather than waited for, and the start time is that second's.
    """
    current = now()
    # A second less than the tolerance: the name chosen after the newest must not be in the future itself.
    newest = backups.newest(store.list_backups(), current - timedelta(seconds=1), stale)
    newest_time = backups.backup_time(newest) if newest is not None else None
    named = current.replace(microsecond=0)
    if newest_time is not None:
        after_newest = newest_time + timedelta(seconds=1)
        wait = (after_newest - current).total_seconds()
        if 0 < wait <= 1:
            time.sleep(wait)
            current = now()
        named = max(current.replace(microsecond=0), after_newest)
    # A name already taken by something that is not listed (not ours, an empty file, a symlink) would fail the backup:
    # the next free second, within the tolerance that keeps it from counting as named in the future.
    taken = store.taken_names()
    while backups.backup_name(named, stale, encrypted) in taken:
        if named >= current + backups.FUTURE_TOLERANCE / 2:
            raise BackupError(f"the names of the next {backups.FUTURE_TOLERANCE.seconds // 2} seconds are all taken in "
                              f"{store.where} by what is not a backup of ours (e.g. "
                              f"{backups.backup_name(named, stale, encrypted)}): someone who can write there put them")
        named += timedelta(seconds=1)
    # A backup's time is its name's (common.metadata refuses a `started` outside the named second): after a clock
    # that stepped back, or past names taken, the start is recorded as the named second: later than the snapshot's
    # (at most FUTURE_TOLERANCE), never earlier, so a --to-time restore never takes it for a moment it postdates.
    return max(current, named), backups.backup_name(named, stale, encrypted)
