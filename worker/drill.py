"""The restore drill: prove the newest backup (compacted ones included) restores, by restoring it and running
etcd on it.

Verify the archive (against the digest and size its metadata recorded), restore it with etcd's tool
into a private work dir, start a throwaway etcd there, check that it serves the backup's revision and
key count (from its metadata), stop it, clean up. The result goes into the backup's metadata
(`drill`, shown by ?detail=true, with the version of the etcd it ran: config's etcd-bin, the one that suits the
backup's etcd_version) and into Redis for /metrics
(`etcd_backup_last_drill_success_timestamp_seconds`); a drill that breaks in any way is a failed one.

The throwaway etcd serves the whole keyspace without TLS or auth checks of its own: it listens only
on unix sockets inside the 0700 work dir, so no other local user can connect, and it dies with the
worker (SIGKILL on its parent's death); a work dir left by a killed worker is removed when the next
worker starts (recovery.workdir).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import grpc
import redis

from common import backups, etcd, present
from common.clock import redis_clock
from common.config import Config
from common.metadata import BackupMetadata
from common.metrics import record_drill
from common.storage import BackupStore, open_store
from recovery.restore import Member, RestoreError, restore
from recovery.throwaway import EtcdBinary, ThrowawayFailed, choose_etcd, member_flags, throwaway_etcd
from recovery.verify import CannotVerify, Verified, VerifyError, verify_stored
from recovery.workdir import DRILL_PREFIX, private_workdir
from worker.drill_point import PointChecked, PointFailed, check_random_point

logger = logging.getLogger(__name__)

class DrillFailed(Exception):
    """The restored etcd did not start, or does not hold what the backup recorded."""


@dataclass(frozen=True)
class DrillResult:
    backup: str | None
    passed: bool
    reason: str
    seconds: float
    point_revision: int | None = None
    """The revision the point-in-time check restored (worker.drill_point), if deltas follow the backup."""
    etcd_version: str | None = None
    """The version of the etcd the drill started on the restored backup (config's etcd-bin), once it chose one."""


def run_drill(config: Config, connection: redis.Redis | None = None) -> DrillResult:
    """Drill the newest backup; record and return the result."""
    began = time.monotonic()
    store = open_store(config)
    # A compacted backup is drilled like any other: it is where a restore to a recent revision starts.
    newest = backups.newest(store.list_backups(), redis_clock(connection)(), compacted=True)
    if newest is None:
        result = DrillResult(None, False, "no backup to drill", 0.0)
    else:
        result = _drill(config, store, newest, began)
    _record(store, connection, result)
    return result


def _drill(config: Config, store: BackupStore, name: str, began: float) -> DrillResult:
    metadata = store.read_metadata(name)
    point: PointChecked | None = None
    binary: EtcdBinary | None = None
    try:
        binary = choose_etcd(config.etcd_bin, metadata.etcd_version if metadata is not None else None)
        with private_workdir(DRILL_PREFIX) as work:
            verified = verify_stored(store, name, work, metadata, config.identity_file)
            reason, point = _restore_and_check(config, verified, work, Drilled(store, name, metadata), binary)
            reason = f"on etcd {binary.version}: {reason}"
    except CannotVerify as exc:
        reason, passed = f"the drill could not check the backup: {exc}", False
    except (VerifyError, RestoreError, DrillFailed, PointFailed) as exc:
        reason, passed = (f"on etcd {binary.version}: " if binary is not None else "") + str(exc), False
    except ThrowawayFailed as exc:  # no etcd to start (choose_etcd)
        reason, passed = f"the drill could not start etcd: {exc}", False
    except Exception as exc:  # noqa: BLE001 - a drill that breaks is a failed drill, and says why
        logger.exception("restore drill of %s broke", name)
        reason, passed = f"the drill broke: {type(exc).__name__}: {exc}", False
    else:
        passed = True
    return DrillResult(name, passed, reason, round(time.monotonic() - began, 3),
                       point.revision if passed and point is not None else None,
                       binary.version if binary is not None else None)


@dataclass(frozen=True)
class Drilled:
    store: BackupStore
    name: str
    metadata: BackupMetadata | None


def _restore_and_check(config: Config, verified: Verified, work: Path, drilled: Drilled,
                       binary: EtcdBinary) -> tuple[str, PointChecked | None]:
    """Restore and check the backup on etcd `binary`, then the deltas that follow it (if any, and with metadata to
    chain from)."""
    data_dir = work / "data"
    restore(verified.db_path, data_dir, Member(**member_flags()))
    verified.db_path.unlink()  # the data dir has its copy now: half the disk space
    try:
        with throwaway_etcd(work, data_dir, config.etcd.username, config.etcd.password, binary) as connection:
            reason = _check_member(connection, config.etcd.username is None, drilled.metadata)
            if drilled.metadata is None:
                return reason, None
            point = check_random_point(config, drilled.store, drilled.name, drilled.metadata, connection)
            return (reason, None) if point is None else (f"{reason}; {point.reason}", point)
    except ThrowawayFailed as exc:
        raise DrillFailed(str(exc)) from None


def _check_member(connection: etcd.EtcdConnection, no_username: bool, metadata: BackupMetadata | None) -> str:
    revision = int(connection.status.header.revision)
    if metadata is None:
        return f"the restored etcd serves revision {revision} (no metadata to compare with)"
    if revision < metadata.revision:
        raise DrillFailed(f"the restored etcd is at revision {revision}, the backup recorded {metadata.revision}")
    if metadata.key_count is None:
        return f"the restored etcd serves revision {revision} (no key count recorded)"
    try:
        keys = connection.key_count(metadata.revision, timeout=10)
    except grpc.RpcError as exc:
        why = etcd.describe_rpc_error(exc, 10)
        if exc.code() == grpc.StatusCode.OUT_OF_RANGE:  # compacted past it between proof and snapshot
            return (f"the restored etcd serves revision {revision}; the key count was not compared: revision "
                    f"{metadata.revision} is compacted in the snapshot")
        if no_username and _auth_refused(exc):
            return (f"the restored etcd serves revision {revision}; its keys were not counted: the cluster has "
                    "etcd auth on and the config has no username/password (a certificate user cannot log in "
                    "on the drill's unix socket)")
        raise DrillFailed(f"cannot count the restored keys: {why}") from None
    if keys != metadata.key_count:
        raise DrillFailed(f"the restored etcd has {present.count(keys, 'user key')} at revision {metadata.revision}, "
                          f"the backup recorded {metadata.key_count}")
    return f"the restored etcd serves revision {revision} with {present.count(keys, 'user key')}, as recorded"


def _record(store: BackupStore, connection: redis.Redis | None, result: DrillResult) -> None:
    now = datetime.now(UTC)
    outcome = "passed" if result.passed else "failed"
    log = logger.info if result.passed else logger.error
    log("restore drill of %s %s in %.1fs: %s", result.backup, outcome, result.seconds, result.reason)
    if result.backup is not None:
        metadata = store.read_metadata(result.backup)
        if metadata is not None:
            drill = {"time": now.isoformat(timespec="seconds"), "outcome": outcome, "reason": result.reason,
                     "seconds": result.seconds,
                     **({"point_revision": result.point_revision} if result.point_revision is not None else {}),
                     **({"etcd_version": result.etcd_version} if result.etcd_version is not None else {})}
            store.update_metadata(replace(metadata, drill=drill))
    if connection is not None:
        record_drill(connection, now.timestamp(), result.backup or "", result.passed, result.reason)


def _auth_refused(exc: grpc.RpcError) -> bool:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else "") or ""
    return code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNAUTHENTICATED) and ("user name" in details or "permission" in details
                                                          or "auth" in details)
