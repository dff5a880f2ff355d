"""One backup, start to finish: snapshot etcd, verify, archive, rotate. Knows nothing of RQ."""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta

import grpc

from common import backups, etcd, retention
from common.config import Config
from common.metadata import BackupMetadata, remove_metadata, write_metadata
from worker.archive import write_archive
from worker.errors import BackupError
from worker.pipeline import Stalled, read_ahead
from worker.snapshot import TRAILER_SIZE, verified_snapshot

logger = logging.getLogger(__name__)

READ_AHEAD_MESSAGES = 64
"""Snapshot messages (32 KiB each) received ahead of the compressor: 2 MiB at most in memory."""
STALL_SECONDS = 15.0
"""A snapshot stream that sends nothing for this long fails the backup: etcd streams its database
without pauses, and gRPC's keepalive alone takes about a minute to notice a frozen peer."""


def take_backup(config: Config, temp_tag: str) -> BackupMetadata:
    """Take one backup; raise BackupError naming the cause. The caller holds the backup lock.

    `temp_tag` (the job's id) goes into the temp file's name, to tell whose it is.
    """
    began = time.monotonic()
    try:
        connection = etcd.connect(config.etcd)
    except etcd.EtcdUnavailable as exc:
        raise BackupError(str(exc)) from None
    with connection:
        started = _fresh_second(config)
        name = backups.backup_name(started)
        status = connection.status
        key_count = _key_count(connection, int(status.header.revision), config)
        digests: list[bytes] = []
        recorded: list[BackupMetadata] = []

        def record(archive_size: int) -> None:
            metadata = BackupMetadata(
                filename=name, filesize=archive_size, cluster_id=f"{status.header.cluster_id:x}",
                member_id=f"{status.header.member_id:x}", endpoint=connection.endpoint,
                revision=int(status.header.revision), etcd_version=status.version,
                db_size=member_size - TRAILER_SIZE, db_sha256=digests[0].hex(), started=started.isoformat(),
                duration=round(time.monotonic() - began, 3), key_count=key_count,
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
    # One line per backup, never a secret: what an operator greps for.
    logger.info("backup %s: %d bytes in %.2fs, revision %d from %s", name, metadata.filesize, metadata.duration,
                metadata.revision, metadata.endpoint)
    # Rotation and retention run only now that the new backup is complete and durable.
    retention.prune(config.backup_dir, datetime.now(UTC), config.rotate, config.retention, protect=name)
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


def _key_count(connection: etcd.EtcdConnection, revision: int, config: Config) -> int | None:
    """For the metadata (a restore drill checks it); a backup does not fail for want of it."""
    try:
        return connection.key_count(revision, config.etcd.timeout)
    except grpc.RpcError as exc:
        logger.warning("cannot count etcd's keys: %s", etcd.describe_rpc_error(exc, config.etcd.timeout))
        return None


def _fresh_second(config: Config) -> datetime:
    """Return the start time for the next backup: now, or the next second after the newest backup.

    Names have one-second resolution; two backups must never share one.
    """
    now = datetime.now(UTC)
    names = backups.list_backups(config.backup_dir)
    newest = backups.backup_time(names[-1]) if names else None
    if newest is not None and now < newest + timedelta(seconds=1):
        wait = (newest + timedelta(seconds=1) - now).total_seconds()
        if wait <= 1:  # a clock far behind the newest name is no reason to stall; link() still never clobbers
            time.sleep(wait)
            now = datetime.now(UTC)
    return now.replace(microsecond=0)


def _describe_os_error(exc: OSError, config: Config) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"backup-dir {config.backup_dir} is full ({exc.strerror}); older backups were kept"
    return f"cannot write to backup-dir {config.backup_dir}: {exc.strerror or exc}"
