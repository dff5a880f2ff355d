"""The drill's point-in-time check, when deltas follow the drilled backup: a random revision between the backup
and the last delta, reached in the drill's throwaway etcd as `etcd-backup restore --to-revision` reaches it,
then compared key for key (value and mod revision) with the original etcd at that revision, while etcd still
has it (not compacted).

A random revision, not always the last: over many drills, each part of the recovery window is tried.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from etcd3 import etcdrpc

from common import etcd, present
from common.config import Config
from common.metadata import BackupMetadata
from common.storage import BackupStore
from recovery.pitr import Plan, apply_plan, identities_of, reach_from
from recovery.restore import RestoreError

PAGE = 1000
"""Keys read at a time from each etcd while comparing."""
TIMEOUT = 30.0


class PointFailed(Exception):
    """The deltas do not reach the point, or the restored keyspace there is not etcd's."""


@dataclass(frozen=True)
class PointChecked:
    revision: int
    reason: str


def check_random_point(config: Config, store: BackupStore, backup: str, metadata: BackupMetadata,
                       restored: etcd.EtcdConnection) -> PointChecked | None:
    """Apply the deltas after `backup` (restored in `restored`) up to a random revision and compare with etcd;
    None when no delta follows the backup."""
    identities = identities_of(config.identity_file)
    start = int(restored.status.header.revision)
    try:
        deltas, reached = reach_from(store, metadata.revision, identities)
    except RestoreError as exc:
        raise PointFailed(str(exc)) from None
    if reached <= start:
        return None
    revision = random.randint(start + 1, reached)
    try:
        events = apply_plan(restored, store, Plan(backup, metadata, deltas, revision), identities)
    except RestoreError as exc:
        raise PointFailed(f"revision {revision}: {exc}") from None
    applied = (f"point in time: revision {revision} (random, of {start + 1}-{reached}), "
               f"{present.count(events, 'event')} applied")
    return PointChecked(revision, f"{applied}; {_compare(config, restored, revision)}")


def _compare(config: Config, restored: etcd.EtcdConnection, revision: int) -> str:
    """Compare both keyspaces at `revision`; say how, or PointFailed naming the first difference."""
    try:
        original = etcd.connect(config.etcd)
    except etcd.EtcdUnavailable as exc:  # the backup and deltas are what a drill checks: not etcd's health
        return f"not compared with etcd: {exc}"
    try:
        compared = 0
        for ours, theirs in zip(_pages(restored, revision), _pages(original, revision), strict=False):
            if ours != theirs:
                raise PointFailed(f"at revision {revision}, the restored keys differ from etcd's: "
                                  f"{_first_difference(ours, theirs)}")
            compared += len(ours)
        return f"{present.count(compared, 'user key')} equal to etcd's at that revision"
    except grpc.RpcError as exc:
        # Only etcd's own compaction spares the check; a future revision (also OUT_OF_RANGE) is a failure.
        if exc.code() == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (exc.details() or ""):
            return f"not compared with etcd: it compacted revision {revision} meanwhile"
        raise PointFailed(f"cannot compare with etcd: {etcd.describe_rpc_error(exc, TIMEOUT)}") from None
    finally:
        original.channel.close()


Key = tuple[bytes, bytes, int]


def _pages(connection: etcd.EtcdConnection, revision: int) -> Iterator[list[Key]]:
    """The whole keyspace at `revision`, PAGE keys at a time, as (key, value, mod revision); a last empty page."""
    kv, after = etcdrpc.KVStub(connection.channel), b"\0"
    while True:
        answer = kv.Range(etcdrpc.RangeRequest(key=after, range_end=b"\0", revision=revision, limit=PAGE,
                                               serializable=connection.currency is None),
                          metadata=connection.metadata, timeout=TIMEOUT)
        page = [(kv_.key, kv_.value, int(kv_.mod_revision)) for kv_ in answer.kvs]
        yield page
        if not page:
            return
        if not answer.more:
            yield []
            return
        after = page[-1][0] + b"\0"


def _first_difference(ours: list[Key], theirs: list[Key]) -> str:
    for mine, etcds in zip(ours, theirs, strict=False):
        if mine == etcds:
            continue
        if mine[0] == etcds[0]:
            what = "its value" if mine[1] != etcds[1] else f"its mod revision ({mine[2]}, etcd's {etcds[2]})"
            return f"{mine[0]!r}: {what} differs"
        return f"restored {mine[0]!r} where etcd has {etcds[0]!r}"
    longer, who = (ours, "only in the restored etcd") if len(ours) > len(theirs) else (theirs, "only in etcd")
    return f"{who}: {longer[min(len(ours), len(theirs))][0]!r}"
