"""One backup, start to finish: snapshot etcd, verify, archive, rotate. Knows nothing of RQ."""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta

import grpc
from etcd3 import etcdrpc

from common import backups, etcd, retention
from common.clock import Clock, local_now
from common.config import Config
from common.metadata import BackupMetadata, remove_metadata, write_metadata
from common.snapshot_format import TRAILER_SIZE
from worker.archive import write_archive
from worker.errors import BackupError
from worker.pipeline import Stalled, read_ahead
from worker.snapshot import verified_snapshot

logger = logging.getLogger(__name__)

READ_AHEAD_MESSAGES = 64
"""Snapshot messages (32 KiB each) received ahead of the compressor: 2 MiB at most in memory."""
STALL_SECONDS = 15.0
"""A snapshot stream that sends nothing for this long fails the backup: etcd streams its database
without pauses, and gRPC's keepalive alone takes about a minute to notice a frozen peer."""


def take_backup(config: Config, temp_tag: str, now: Clock = local_now,
                published: Callable[[BackupMetadata], object] = lambda metadata: None) -> BackupMetadata:
    """Take one backup; raise BackupError naming the cause. The caller holds the backup lock.

    `temp_tag` (the job's id) goes into the temp file's name, to tell whose it is. `now` is the
    clock that names the backup and ages the others (common.clock: Redis' when there are workers).
    `published(metadata)` runs as soon as the backup is listed, before rotation: whatever happens
    after, the backup exists.
    """
    began = time.monotonic()
    try:
        connection = etcd.connect(config.etcd)
    except etcd.EtcdUnavailable as exc:
        raise BackupError(str(exc)) from None
    with connection:
        started, name = _fresh_name(config, now)
        status, currency = connection.status, connection.proof
        # The snapshot starts after the linearizable read that gave this revision: it holds at least it.
        revision = currency.cluster_revision
        key_count, key_count_error = _key_count(connection, revision, config)
        digests: list[bytes] = []
        recorded: list[BackupMetadata] = []

        def record(archive_size: int, archive_sha256: str) -> None:
            metadata = BackupMetadata(
                filename=name, filesize=archive_size, archive_sha256=archive_sha256,
                cluster_id=f"{status.header.cluster_id:x}", member_id=f"{status.header.member_id:x}",
                endpoint=connection.endpoint,
                revision=revision, etcd_version=status.version,
                db_size=member_size - TRAILER_SIZE, db_sha256=digests[0].hex(), started=started.isoformat(),
                duration=round(time.monotonic() - began, 3), key_count=key_count, key_count_error=key_count_error,
                revision_at_end=_revision_now(connection, config), leader=currency.is_leader,
                raft_term=currency.raft_term, raft_index=currency.raft_index, alarms=list(currency.alarms),
            )
            write_metadata(config.backup_dir, metadata, tag=temp_tag)
            recorded.append(metadata)

        try:
            responses = connection.snapshot()
            with _first_message_deadline(responses):
                member_size, chunks = verified_snapshot(responses, on_verified=digests.append)
            try:
                # The stream is received and checked on a thread of its own while this one compresses and writes.
                with closing(read_ahead(chunks, READ_AHEAD_MESSAGES, cancel=responses.cancel,
                                        idle_timeout=STALL_SECONDS)) as received:
                    write_archive(config.backup_dir, name, started, member_size, received, config.gzip_level,
                                  tag=temp_tag, before_publish=record)
            except BaseException:
                if recorded:  # our metadata went in, the archive did not: no metadata without its backup
                    remove_metadata(config.backup_dir, name)
                raise
        except grpc.RpcError as exc:
            cause = etcd.describe_rpc_error(exc, config.etcd.timeout)
            raise BackupError(f"snapshot stream from {connection.endpoint} failed: {cause}") from None
        except Stalled as exc:
            raise BackupError(f"snapshot stream from {connection.endpoint} stalled: {exc}") from None
        except FileExistsError:
            raise BackupError(f"{name} already exists in backup-dir; it was not overwritten") from None
        except OSError as exc:
            raise BackupError(_describe_os_error(exc, config)) from None
    metadata = recorded[0]
    published(metadata)
    # One line per backup, never a secret: what an operator greps for.
    logger.info("backup %s: %d bytes in %.2fs, revision %d from %s", name, metadata.filesize, metadata.duration,
                metadata.revision, metadata.endpoint)
    # Rotation and retention run only now that the new backup is complete and durable.
    retention.prune(config.backup_dir, now(), config.rotate, config.retention, protect=name)
    return metadata


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


def _fresh_name(config: Config, now: Clock) -> tuple[datetime, str]:
    """Return the start time and the name of the next backup, a second after the newest backup's.

    Names have one-second resolution; two backups must never share one, and the new backup must be
    the newest (rotation keeps the newest). Within a second of the newest, wait for the next second.
    A newest named further ahead (by up to FUTURE_TOLERANCE: a clock that stepped back) is followed
    by the next second's name rather than waited for; the start time stays the clock's.
    """
    current = now()
    # A second less than the tolerance: the name chosen after the newest must not be in the future itself.
    newest = backups.newest(backups.list_backups(config.backup_dir), current - timedelta(seconds=1))
    newest_time = backups.backup_time(newest) if newest is not None else None
    if newest_time is None:
        return current.replace(microsecond=0), backups.backup_name(current)
    after_newest = newest_time + timedelta(seconds=1)
    wait = (after_newest - current).total_seconds()
    if 0 < wait <= 1:
        time.sleep(wait)
        current = now()
    started = current.replace(microsecond=0)
    return started, backups.backup_name(max(started, after_newest))


def _describe_os_error(exc: OSError, config: Config) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"backup-dir {config.backup_dir} is full ({exc.strerror}); older backups were kept"
    return f"cannot write to backup-dir {config.backup_dir}: {exc.strerror or exc}"
