"""Point-in-time restore: the newest full backup at or before the target, then the deltas (common.deltas) up to
it, applied in a throwaway etcd one Txn per original revision, so that the restored revisions are the
original's; the result is snapshotted and restored into the data dir with etcd's own tool, as a backup is.

Every delta on the way is read and checked before anything is restored: a missing or damaged delta stops the
restore before it starts, naming the last revision it can reach.

Leases are kept, as etcd's own snapshot restore keeps them: the backup's leases come with its snapshot, and a put of
a delta with a lease the throwaway etcd does not have yet is preceded by a LeaseGrant of that ID with the TTL the
watcher recorded (etcd's shortest for a lease that was gone when it asked); the put is made with that lease. While
the deltas are applied every lease is kept alive, so that none expires and deletes keys between two revisions;
the restored etcd counts each lease's TTL afresh from its start, as after any restart.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import grpc
from etcd3 import etcdrpc

from common import backups, etcd, present, protowire
from common.config import Config
from common.deltas import (
    NO_FINGERPRINT,
    PUT,
    Delta,
    DeltaError,
    DeltaName,
    Event,
    Revision,
    decode_delta,
    event_from_watch,
    fingerprint,
    parse_delta_name,
)
from common.encryption import Identity
from common.metadata import BackupMetadata
from common.storage import BackupStore
from recovery.restore import SHARED_MEMORY, Member, RestoreError, restore
from recovery.throwaway import ThrowawayFailed, choose_etcd, member_flags, throwaway_etcd
from recovery.verify import load_identities, verify_stored
from recovery.workdir import POINT_IN_TIME_PREFIX, private_workdir

logger = logging.getLogger(__name__)

SNAPSHOT_NAME = "point-in-time.db"
MEMORY_DIR = SHARED_MEMORY
"""etcd fsyncs each Txn: one per original revision. On tmpfs that costs nothing (measured on the README's
machine: 990 events/s on disk, see README for in memory); the result is snapshotted onto disk as before."""
MEMORY_HEADROOM = 3
"""The database, its WAL and the deltas' growth: room in MEMORY_DIR for this many times the backup's database."""
END_OF_DELTAS = 2**63 - 1
"""A revision past every delta (etcd's revisions are int64): the chain goes to the end of what is stored."""
SNAPSHOT_WATCH_SECONDS = 30.0
"""How long reading the restored backup's own revisions (to tie the first delta to it) may take."""
KEEP_ALIVE_SECONDS = 0.5
"""How often the throwaway etcd's leases are kept alive while the deltas are applied: well within etcd's shortest
TTL (1.5 s with its default election timeout, rounded up to 2 s)."""
SHORTEST_TTL = 1
"""The TTL asked for a lease whose TTL the watcher could not learn (it was gone): etcd raises it to its shortest."""
PREPARED_CHUNK_REVISIONS = 16
"""Revisions the reading thread encodes between two hand-overs: a few hundred microseconds of its CPU, about one
Txn's wait for etcd (a larger chunk makes the apply wait for the GIL, held for up to 5 ms at a time)."""
PREPARED_CHUNKS = 64
"""Chunks read ahead of the apply at most (1,024 revisions): memory stays flat whatever the deltas hold."""
TXN_METHOD = "/etcdserverpb.KV/Txn"
_TXN_SUCCESS, _REQUEST_PUT, _REQUEST_DELETE_RANGE = 2, 2, 3
"""Field numbers (etcd's rpc.proto): TxnRequest.success, RequestOp.request_put, RequestOp.request_delete_range."""
_TXN_HEADER, _HEADER_REVISION = 1, 3
"""TxnResponse.header, ResponseHeader.revision."""


@dataclass(frozen=True)
class Target:
    """Where to restore to: a revision, or a moment (the newest revision the watcher had received by then)."""

    revision: int | None = None
    time: datetime | None = None

    def __str__(self) -> str:
        return f"revision {self.revision}" if self.revision is not None else f"time {self.time}"


@dataclass(frozen=True)
class Plan:
    backup: str
    metadata: BackupMetadata
    deltas: list[str]
    """The deltas to apply, in order, each read and checked once already."""
    revision: int
    """The revision the restore reaches."""
    reached_at: datetime | None = None
    """When etcd had that revision: the watcher's time of receiving it, or the backup's start without deltas."""


def plan_restore(store: BackupStore, target: Target, now: datetime, identities: list[Identity]) -> Plan:
    """The backup and the deltas that reach `target`; RestoreError, naming how far the store reaches, if none do."""
    asked = str(target)
    if target.time is not None:  # the revision etcd was at then, planned as that revision (a break is refused)
        target = Target(revision=_revision_at(store, target.time, now, identities))
        asked += f" (revision {target.revision})"
    assert target.revision is not None
    backup, metadata = base_backup(store, target.revision, now)
    chain = _chain(store, metadata.revision, target.revision, identities)
    if chain.reached < target.revision:
        raise RestoreError(f"cannot reach {asked}: {chain.broken}; from {backup}, the backups and "
                           f"deltas reach revision {chain.reached} (restore --to-revision {chain.reached})")
    reached_at = metadata.started_at() if chain.reached_seen is None else datetime.fromtimestamp(chain.reached_seen,
                                                                                                   UTC)
    return Plan(backup, metadata, chain.deltas, chain.reached, reached_at)


def plan_latest(store: BackupStore, now: datetime, identities: list[Identity]) -> Plan:
    """The newest state the store can give: the newest full backup by revision, then the deltas after it up to
    the newest revision stored, as plan_restore plans that revision (a missing or damaged delta on the way refuses
    it, naming the revision the others reach); RestoreError if the store holds no backup."""
    return plan_restore(store, Target(revision=newest_stored_revision(store, now)), now, identities)


def newest_backup(store: BackupStore, now: datetime) -> tuple[str, BackupMetadata]:
    """The newest full backup by revision (base_backup's pick, with nothing past it); RestoreError if the store
    holds none."""
    if not any(not backups.is_stale(name) and not backups.is_future(name, now) for name in store.list_backups(now)):
        raise RestoreError(f"no backup in {store.where}")
    return base_backup(store, END_OF_DELTAS, now)


def newest_stored_revision(store: BackupStore, now: datetime) -> int:
    """The newest revision the store holds: the newest full backup's (by revision), or the newest a delta's name
    says it holds if that is later; RestoreError if the store holds no backup."""
    _, metadata = newest_backup(store, now)
    deltas = (said.last for name in store.list_deltas() if (said := parse_delta_name(name)) is not None)
    return max([metadata.revision, *deltas])


def stored_after(store: BackupStore, revision: int, identities: list[Identity],
                 until: int = END_OF_DELTAS) -> tuple[list[str], int, str]:
    """The deltas that follow `revision` without a break, up to the end of what is stored, the first missing or
    damaged delta, or revision `until` at most (the delta that holds it is read and checked whole), and
    why they stop there if a missing or damaged delta stops them ("" if they reach the end of what is stored):
    worker.standby follows the deltas until a break, then starts again from a newer backup."""
    chain = _chain(store, revision, until, identities)
    return chain.deltas, chain.reached, chain.broken if chain.blocked else ""


def reach_from(store: BackupStore, revision: int, identities: list[Identity]) -> tuple[list[str], int]:
    """The deltas that follow `revision` without a break, to the end of what is stored, and the revision they
    reach; RestoreError if one on the way is missing or damaged."""
    chain = _chain(store, revision, END_OF_DELTAS, identities)
    if chain.blocked:
        raise RestoreError(f"the deltas after revision {revision} break after revision {chain.reached}: "
                           f"{chain.broken}")
    return chain.deltas, chain.reached


def base_backup(store: BackupStore, target: int, now: datetime) -> tuple[str, BackupMetadata]:
    """The current backup (with metadata) nearest below revision `target`: the highest revision whose snapshot is at
    or before it (the newest name among equals). By revision, not by name: a compacted backup is named after the
    moment the watcher received its revision (its clock, maybe lagging), so it may sort after a backup taken from
    etcd later at a higher revision; picked by name, a restore would start from the lower one and need deltas that
    retention, counting from the newer backup, has deleted."""
    best: tuple[str, BackupMetadata] | None = None
    for name in reversed(store.list_backups(now)):
        if backups.is_stale(name) or backups.is_future(name, now):
            continue
        metadata = store.read_metadata(name)
        # The snapshot holds a revision from `revision` to `revision_at_end`: all of it must be before the target
        # (a snapshot started before a --to-time may hold later revisions: it is picked by revision too).
        if metadata is not None and (metadata.revision_at_end or metadata.revision) <= target \
                and (best is None or metadata.revision > best[1].revision):
            best = name, metadata
    if best is None:
        raise RestoreError(f"no full backup (with its metadata) was taken at or before revision {target}: nothing "
                           "to start from")
    return best


def _revision_at(store: BackupStore, when: datetime, now: datetime, identities: list[Identity]) -> int:
    """The newest revision received by `when`, from every backup and delta stored (also those past a missing
    delta: a break before the target must refuse the restore, not end it early)."""
    started = [metadata.revision for name in store.list_backups(now)
               if not backups.is_stale(name) and not backups.is_future(name, now)
               and (metadata := store.read_metadata(name)) is not None
               and datetime.fromisoformat(metadata.started) <= when]
    if not started:
        raise RestoreError(f"no full backup (with its metadata) was taken at or before time {when}: nothing to "
                           "start from")
    reached, unreadable = max(started), []
    stored = sorted((said, name) for name in store.list_deltas() if (said := parse_delta_name(name)))
    for said, name in stored:
        if said.first_seen > when:  # names hold whole seconds, rounded down: all of it was received later
            continue
        if said.last_seen.timestamp() + 1 <= when.timestamp():  # all of it was received by then
            reached = max(reached, said.last)
            continue
        try:
            # Its revisions' numbers and times only: no event is built (a delta may hold a million).
            received = [revision.number for revision in read_delta(store, name, identities, events=False).revisions
                        if revision.seen <= when.timestamp()]
        except DeltaError as exc:
            unreadable.append((said, str(exc)))
            continue
        reached = max([reached, *received])
    for said, why in unreadable:  # it may hold revisions received by then: which, no one can tell
        if said.last > reached:
            raise RestoreError(f"cannot tell the revision etcd was at at time {when}: {why}; restore --to-revision "
                               f"{max(reached, said.first - 1)} at most")
    # The revision after `reached` was received after `when`, if a delta holds it. If none does and a later delta
    # exists, the revisions in between are stored nowhere (deleted, or the watcher was down), and when etcd had them
    # no one can tell: they may precede `when`.
    later = [said for said, _ in stored if said.last > reached]
    if later and not any(said.first <= reached + 1 for said in later):
        after = min(said.first for said in later)
        raise RestoreError(f"cannot tell the revision etcd was at at time {when}: no delta holds revisions "
                           f"{reached + 1} to {after - 1} (missing, or the watcher was not running), and they may have "
                           f"come before it; restore --to-revision {reached} at most")
    return reached


class _Chain(NamedTuple):
    deltas: list[str]
    reached: int
    """The revision they reach."""
    broken: str
    """Why they stop there (a missing or damaged delta, or the end of what is stored); "" at the target."""
    blocked: bool
    """Whether a missing or damaged delta stops them."""
    reached_seen: float | None
    """When the watcher received revision `reached` (Unix time); None if no delta was applied."""


def _chain(store: BackupStore, after: int, target: int, identities: list[Identity]) -> _Chain:
    """The deltas that follow revision `after` without a break, up to revision `target`."""
    stored = sorted((said, name) for name in store.list_deltas() if (said := parse_delta_name(name)) is not None)
    chain: list[str] = []
    reached, last_applied = after, None
    while reached < target:
        candidates = [(said, name) for said, name in stored if said.first <= reached + 1 <= said.last]
        seen = last_applied.seen if last_applied is not None else None
        if not candidates:
            later = any(said.first > reached + 1 for said, _ in stored)
            why = " (one is missing)" if later else ": the deltas stored end there"
            return _Chain(chain, reached, f"no delta holds revision {reached + 1}{why}", later, seen)
        delta, name, why = _first_intact(store, candidates, identities)
        if delta is None:
            return _Chain(chain, reached, why, True, seen)
        revisions = delta.revisions
        _check_same_history(chain[-1] if chain else "", last_applied, name, delta)
        _check_overlaps(store, name, revisions, stored, identities)
        wanted = [revision for revision in revisions if reached < revision.number <= target]
        if wanted:
            chain.append(name)
            reached, last_applied = wanted[-1].number, wanted[-1]
        if any(revision.number > reached for revision in revisions):  # the rest is past the target
            break
    return _Chain(chain, reached, "", False, last_applied.seen if last_applied is not None else None)


def _first_intact(store: BackupStore, candidates: list[tuple[DeltaName, str]],
                  identities: list[Identity]) -> tuple[Delta | None, str, str]:
    """The first intact delta of `candidates` (the one that reaches furthest first)."""
    problems = []
    for _, name in sorted(candidates, key=lambda pair: -pair[0].last):
        try:
            return read_delta(store, name, identities), name, ""
        except DeltaError as exc:
            problems.append(str(exc))
    return None, "", "; ".join(problems)


def _check_same_history(before: str, last_applied: Revision | None, name: str, delta: Delta) -> None:
    """`delta` must follow the revision the chain reached as etcd had it when its watcher started: else etcd was
    restored to an earlier revision (or replaced) and written past the deltas before, and the two histories
    must not be chained."""
    if last_applied is None or delta.previous.revision != last_applied.number:
        return  # it follows the backup, or overlaps the delta before (the overlap check compares their events)
    if fingerprint(last_applied.number, last_applied.events) != delta.previous:
        raise RestoreError(f"{name} does not follow {before}: etcd's revision {last_applied.number} was another "
                           "when its watcher started (etcd restored to an earlier revision, or another cluster): two "
                           f"histories, never chained; restore to revision {last_applied.number} at most from here, "
                           "or from a full backup taken after it")


def _check_overlaps(store: BackupStore, name: str, revisions: list[Revision], stored: list[tuple[DeltaName, str]],
                    identities: list[Identity]) -> None:
    """Two watchers can store the same revisions (a lease lapsed between a watcher's check and its write): such
    copies must agree event for event, or the store holds two histories and no one can tell which is etcd's."""
    events = {revision.number: revision.events for revision in revisions}
    for said, other in stored:
        if other == name or said.last < revisions[0].number or said.first > revisions[-1].number:
            continue
        try:
            copies = read_delta(store, other, identities).revisions
        except DeltaError:  # a damaged copy is never used: the intact one is
            continue
        for revision in copies:
            if revision.number in events and events[revision.number] != revision.events:
                raise RestoreError(f"{name} and {other} both hold revision {revision.number}, and disagree on it: "
                                   "two histories (another cluster's deltas, or etcd restored to an earlier "
                                   "revision, or tampered with); move the wrong one out of the store")


def identities_of(identity_file: Path | None) -> list[Identity]:
    """The identities that open encrypted deltas; none without an identity file (a delta that needs one says so)."""
    return load_identities(identity_file) if identity_file is not None else []


def read_delta(store: BackupStore, name: str, identities: list[Identity], events: bool = True) -> Delta:
    """Delta `name`, checked whole (common.deltas.decode_delta: within bounds, whatever the store holds); its
    revisions without their events unless `events`."""
    data = store.read_delta(name)
    if data is None:
        raise DeltaError(f"{name} is gone from {store.where}")
    return decode_delta(name, data, identities, events=events)


def restore_to(config: Config, store: BackupStore, plan: Plan, data_dir: Path, member: Member, work: Path,
               identity_file: Path | None, say: Callable[[str], object]) -> int:
    """Restore `plan` into `data_dir` (checked by the caller), using `work` (beside it, private); return the
    number of events applied."""
    snapshot = work / SNAPSHOT_NAME
    with applied_in_throwaway(config, store, plan, work, identity_file, say) as (connection, events):
        _save_snapshot(connection, snapshot)
    restore(snapshot, data_dir, member)
    return events


@contextmanager
def applied_in_throwaway(config: Config, store: BackupStore, plan: Plan, work: Path, identity_file: Path | None,
                         say: Callable[[str], object]) -> Iterator[tuple[etcd.EtcdConnection, int]]:
    """Verify the plan's backup, restore it into a throwaway etcd (in memory when there is room: _apply_dir),
    apply the plan's deltas there, and yield a connection to it at the plan's revision and the events applied
    (a restore snapshots it; worker.compact compacts it first). RestoreError for whatever fails. The throwaway etcd
    is config's etcd-bin that suits the backup's etcd_version (recovery.throwaway.choose_etcd)."""
    identities = identities_of(identity_file)
    verified = verify_stored(store, plan.backup, work, plan.metadata, identity_file)
    say(f"{plan.backup}: {verified.report()}")
    try:
        binary = choose_etcd(config.etcd_bin, plan.metadata.etcd_version)
        say(f"applying the deltas in a throwaway {binary} (the backup was taken from etcd "
            f"{plan.metadata.etcd_version})")
        with _apply_dir(work, plan.metadata.db_size) as apply_dir:
            staged = apply_dir / "staged"
            restore(verified.db_path, staged, Member(**member_flags()))
            verified.db_path.unlink()
            with throwaway_etcd(work, staged, config.etcd.username, config.etcd.password, binary) as connection:
                events = apply_plan(connection, store, plan, identities)
                say(f"applied {present.count(events, 'event')} of {present.count(len(plan.deltas), 'delta')}: etcd is "
                    f"at revision {plan.revision}{_with_user_keys(connection, plan.revision)}")
                yield connection, events
    except ThrowawayFailed as exc:
        raise RestoreError(str(exc)) from None
    except grpc.RpcError as exc:
        raise RestoreError(f"the throwaway etcd failed: {etcd.describe_rpc_error(exc, 10)}") from None


def _with_user_keys(connection: etcd.EtcdConnection, revision: int) -> str:
    """", with N user keys" (the keys a client sees at `revision`), or nothing if etcd would not count them (a user
    whose role may write every key but not read them all)."""
    try:
        return f", with {present.count(connection.key_count(revision, timeout=60), 'user key')}"
    except grpc.RpcError:
        return ""


def _check_follows_backup(connection: etcd.EtcdConnection, plan: Plan, first: Delta) -> None:
    """Refuse unless the first delta is tied to the restored backup: the revision before it (its fingerprint)
    and any of its revisions the snapshot holds already must be the snapshot's own. Nothing else ties them:
    with encryption on, only someone who can read the backup could forge that, and no one without the
    identity can (a delta encrypted to the public recipient alone is not enough)."""
    head = head_revision(connection)
    held = [revision for revision in first.revisions if revision.number <= head]
    checked = [revision.number for revision in held]
    if first.previous.digest != NO_FINGERPRINT:
        checked.append(first.previous.revision)
    if not checked or max(checked) > head:
        raise RestoreError(f"{plan.deltas[0]} cannot be tied to {plan.backup} (it records no revision the backup "
                           f"holds): restore to revision {head} at most from it")
    try:
        snapshot = revision_events(connection, min(checked), max(checked))
    except HistoryCompacted as exc:
        # A compacted backup keeps whole only the revisions after the one it was compacted at (worker.compact: the
        # one before its own), and a delta may begin before that: a second watcher's copy that overlaps the delta
        # the backup ends with. The revisions it holds whole tie them as well (its own revision always is one);
        # the earlier ones are in the snapshot already and are not applied.
        checked = [number for number in checked if number > exc.compacted_at]
        if not checked:
            raise
        snapshot = revision_events(connection, min(checked), max(checked))
    expected = [*([first.previous] if first.previous.revision in checked else []),
                *(fingerprint(revision.number, revision.events) for revision in held if revision.number in checked)]
    for wanted in expected:
        if fingerprint(wanted.revision, snapshot.get(wanted.revision, [])) != wanted:
            raise RestoreError(f"{plan.deltas[0]} does not follow {plan.backup}: its revision {wanted.revision} is "
                               f"not the backup's (planted, or another history): restore to revision {head} at most "
                               "from it")


class HistoryCompacted(RestoreError):
    """The etcd no longer holds the revisions asked for: its history was compacted at revision `compacted_at`."""

    def __init__(self, first: int, compacted_at: int) -> None:
        super().__init__(f"the backup no longer holds revision {first} (compacted at {compacted_at}): its deltas "
                         "cannot be tied to it")
        self.compacted_at = compacted_at


def head_revision(connection: etcd.EtcdConnection) -> int:
    """The etcd's revision now (connection.status is the one it had when connected: a standby applies again and
    again on one connection)."""
    status = etcdrpc.MaintenanceStub(connection.channel).Status(etcdrpc.StatusRequest(), metadata=connection.metadata,
                                                                timeout=30)
    return int(status.header.revision)


def revision_events(connection: etcd.EtcdConnection, first: int, last: int) -> dict[int, list[Event]]:
    """The events of revisions `first`..`last` as the member holds them (a watch from `first`; its head must be at
    least `last`; etcd never splits a revision across watch responses): here, the restored backup's."""
    if last <= 1:  # a new cluster's first revision: no write made it, so it has no event (and a watch waits)
        return {}
    done = threading.Event()

    def requests() -> Iterator[etcdrpc.WatchRequest]:
        yield etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=b"\0", range_end=b"\0", start_revision=first))
        done.wait(SNAPSHOT_WATCH_SECONDS)

    stream = etcdrpc.WatchStub(connection.channel).Watch(requests(), metadata=connection.metadata,
                                                         timeout=SNAPSHOT_WATCH_SECONDS)
    events: dict[int, list[Event]] = {}
    try:
        for response in stream:
            if response.canceled:
                raise HistoryCompacted(first, int(response.compact_revision))
            for event in response.events:
                events.setdefault(int(event.kv.mod_revision), []).append(event_from_watch(event))
            if events and max(events) >= last:
                return events
    finally:
        done.set()
        stream.cancel()
    return events


@contextmanager
def _apply_dir(work: Path, db_size: int) -> Iterator[Path]:
    """Where the throwaway etcd keeps its data while the deltas are applied: in memory (MEMORY_DIR, a private
    directory deleted afterwards) when it has room for MEMORY_HEADROOM times the database, else `work`."""
    if MEMORY_DIR.is_dir() and os.access(MEMORY_DIR, os.W_OK | os.X_OK) \
            and shutil.disk_usage(MEMORY_DIR).free > MEMORY_HEADROOM * db_size + (64 << 20):
        with private_workdir(POINT_IN_TIME_PREFIX, MEMORY_DIR) as memory:
            yield memory
    else:
        yield work


def apply_plan(connection: etcd.EtcdConnection, store: BackupStore, plan: Plan, identities: list[Identity],
               leases: LeasesKeptAlive | None = None) -> int:
    """Apply the plan's deltas to the etcd of `connection` (its backup restored), once the first is tied to the
    backup; return the events applied. `leases`: the etcd's leases, kept alive already by the caller (a standby's,
    which applies plan after plan: the leases granted for one must stay alive for the next)."""
    if plan.deltas:
        _check_follows_backup(connection, plan, read_delta(store, plan.deltas[0], identities))
    return _apply(connection, _revisions(store, plan, identities), plan.revision, leases)


def _revisions(store: BackupStore, plan: Plan, identities: list[Identity]) -> Iterator[Revision]:
    """The revisions of the plan's deltas, read again (checked again: the store may have changed meanwhile)."""
    for name in plan.deltas:
        try:
            delta = read_delta(store, name, identities)
        except DeltaError as exc:
            raise RestoreError(f"{exc} (it was intact when the restore began)") from None
        yield from delta.revisions


def _apply(connection: etcd.EtcdConnection, revisions: Iterator[Revision], target: int,
           leases: LeasesKeptAlive | None = None) -> int:
    """Apply `revisions` after the restored one, up to `target`, one Txn each; check each lands on its number."""
    # Where the etcd is, read before anything is applied (or read ahead): a write it takes later by itself (an
    # expiring lease) must show as a revision out of place, never as one "already held" and skipped.
    head = head_revision(connection)
    if leases is not None:
        with _prepared_ahead(revisions) as prepared:
            return _apply_revisions(connection, prepared, target, leases, head)
    with LeasesKeptAlive(connection) as own, _prepared_ahead(revisions) as prepared:
        return _apply_revisions(connection, prepared, target, own, head)


def _apply_revisions(connection: etcd.EtcdConnection, prepared: Iterator[tuple[Revision, bytes]], target: int,
                     leases: LeasesKeptAlive, head: int) -> int:
    """One Txn per revision, serially, each sent only once the one before it is answered: etcd's gRPC server
    runs each call on a goroutine of its own, so two in flight may reach raft in either order (measured:
    docs/performance.md, "Where a point-in-time restore's time goes"), and a revision must land on its number."""
    txn = connection.channel.unary_unary(TXN_METHOD)  # bytes in, bytes out: no protobuf objects (common.protowire)
    current = head
    events = 0
    for revision, request in prepared:
        if revision.number <= current:  # already in the snapshot (taken while etcd was written to)
            continue
        if revision.number > target:
            break
        if revision.number != current + 1:
            raise RestoreError(f"etcd is at revision {current}, and the next delta revision is {revision.number}: "
                               "the deltas have a hole there")
        leases.grant_missing(revision.events)  # a lease grant makes no revision
        current = txn_revision(txn(request, metadata=connection.metadata, timeout=30))
        if current != revision.number:
            raise RestoreError(f"applying revision {revision.number} left etcd at revision {current}: the restored "
                               "etcd changed by itself (an expiring lease?)")
        events += len(revision.events)
    if current != target:
        raise RestoreError(f"the restored etcd is at revision {current}, not {target}")
    return events


@contextmanager
def _prepared_ahead(revisions: Iterator[Revision]) -> Iterator[Iterator[tuple[Revision, bytes]]]:
    """`revisions`, each with its Txn's bytes, read, checked and encoded on a thread of their own: it runs while
    the apply waits for etcd's answer (gRPC releases the GIL then). Small chunks (PREPARED_CHUNK_REVISIONS): the
    apply never waits long for the GIL the thread holds; at most PREPARED_CHUNKS of them ahead (memory stays
    flat). An error reading the deltas is raised where the apply takes the next revision."""
    chunks: queue.Queue[list[tuple[Revision, bytes]] | BaseException | None] = queue.Queue(PREPARED_CHUNKS)
    stop = threading.Event()

    def hand_over(item: list[tuple[Revision, bytes]] | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def prepare() -> None:
        try:
            chunk: list[tuple[Revision, bytes]] = []
            for revision in revisions:
                chunk.append((revision, txn_request(revision.events)))
                if len(chunk) >= PREPARED_CHUNK_REVISIONS:
                    if not hand_over(chunk):
                        return  # the apply ended
                    chunk = []
            if chunk and not hand_over(chunk):
                return
            hand_over(None)
        except BaseException as exc:  # RestoreError (a delta gone or damaged meanwhile) or a bug: the apply raises it
            hand_over(exc)

    def taken() -> Iterator[tuple[Revision, bytes]]:
        while (chunk := chunks.get()) is not None:
            if isinstance(chunk, BaseException):
                raise chunk
            yield from chunk

    thread = threading.Thread(target=prepare, name="pitr-prepare", daemon=True)
    thread.start()
    try:
        yield taken()
    finally:
        stop.set()
        thread.join()


def txn_request(events: tuple[Event, ...]) -> bytes:
    """The TxnRequest (its bytes) that makes one revision of `events`: a put (with its lease) or a delete of one
    key each, in order, as etcdrpc.TxnRequest(success=[...]).SerializeToString() gives it."""
    return b"".join(protowire.length_delimited(_TXN_SUCCESS, _request_op(event)) for event in events)


def _request_op(event: Event) -> bytes:
    if event.kind == PUT:
        put = _bytes_field(1, event.key) + _bytes_field(2, event.value)
        if event.lease:
            put += protowire.tag(3, protowire.VARINT) + protowire.varint(event.lease)
        return protowire.length_delimited(_REQUEST_PUT, put)
    return protowire.length_delimited(_REQUEST_DELETE_RANGE, _bytes_field(1, event.key))


def _bytes_field(number: int, value: bytes) -> bytes:
    return protowire.length_delimited(number, value) if value else b""  # proto3 writes no empty field


def txn_revision(response: bytes) -> int:
    """The revision in a TxnResponse's header (its bytes): etcd's revision after the Txn; 0 if it has none."""
    for number, _, header in protowire.fields(response):
        if number == _TXN_HEADER and isinstance(header, memoryview):
            for field, kind, value in protowire.fields(header):
                if field == _HEADER_REVISION and kind == protowire.VARINT and isinstance(value, int):
                    return value
            return 0
    return 0


class LeasesKeptAlive:
    """The throwaway etcd's leases (the snapshot's, then those granted for the deltas' puts), kept alive on a
    stream of their own while the deltas are applied (and while worker.compact compacts and snapshots, and for as
    long as worker.standby runs): an expiry there would delete keys, a revision the original
    never had at that point (its own expiries are in the deltas, as deletes)."""

    def __init__(self, connection: etcd.EtcdConnection) -> None:
        self._connection = connection
        self._stub = etcdrpc.LeaseStub(connection.channel)
        answer = self._stub.LeaseLeases(etcdrpc.LeaseLeasesRequest(), metadata=connection.metadata, timeout=30)
        self._held = [int(lease.ID) for lease in answer.leases]
        """Appended to, or replaced whole (the keep-alive stream's thread reads it meanwhile)."""
        self._known = set(self._held)
        self._stop = threading.Event()

    def grant_missing(self, events: tuple[Event, ...]) -> None:
        """Grant each lease of `events`' puts that the etcd does not have yet: its ID, its recorded TTL."""
        for event in events:
            if event.kind != PUT or event.lease == 0 or event.lease in self._known:
                continue
            if event.lease_ttl == 0:
                logger.warning("lease %x: gone when the watcher asked its TTL; granted with etcd's shortest",
                               event.lease)
            self._stub.LeaseGrant(etcdrpc.LeaseGrantRequest(ID=event.lease, TTL=event.lease_ttl or SHORTEST_TTL),
                                  metadata=self._connection.metadata, timeout=30)
            self._known.add(event.lease)
            self._held.append(event.lease)

    def revoke_keyless(self) -> int:
        """Revoke the leases that no key is attached to; return how many. The deltas show a lease revoked (or
        expired) in etcd only as the deletes of its keys: the throwaway etcd still holds it, and each compacted
        backup, starting from the last, would carry it on for ever (kube-apiserver grants one a minute for Events).
        A lease etcd still held with no key on it is dropped too (no delta tells the two apart): its holder's next
        keep-alive finds it gone and grants another, as after any lease expiry; a later put with it grants it
        again (grant_missing). Revoking a lease without keys makes no revision."""
        revoked = set()
        for lease in list(self._held):
            alive = self._stub.LeaseTimeToLive(etcdrpc.LeaseTimeToLiveRequest(ID=lease, keys=True),
                                               metadata=self._connection.metadata, timeout=30)
            if alive.TTL != -1 and not alive.keys:
                self._stub.LeaseRevoke(etcdrpc.LeaseRevokeRequest(ID=lease), metadata=self._connection.metadata,
                                       timeout=30)
                revoked.add(lease)
        if revoked:
            self._held = [lease for lease in self._held if lease not in revoked]
            self._known -= revoked
            logger.info("%d of %d leases had no key and were revoked", len(revoked), len(self._held) + len(revoked))
        return len(revoked)

    def _requests(self) -> Iterator[etcdrpc.LeaseKeepAliveRequest]:
        while True:
            for lease in list(self._held):
                yield etcdrpc.LeaseKeepAliveRequest(ID=lease)
            if self._stop.wait(KEEP_ALIVE_SECONDS):
                return

    def __enter__(self) -> LeasesKeptAlive:
        self._stream = self._stub.LeaseKeepAlive(self._requests(), metadata=self._connection.metadata)
        self._drain = threading.Thread(target=self._receive, name="pitr-keep-alive", daemon=True)
        self._drain.start()
        return self

    def _receive(self) -> None:
        try:
            for _ in self._stream:
                pass
        except grpc.RpcError:  # cancelled at the end; a failure shows as an expiry (a revision out of place)
            pass

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._stream.cancel()
        self._drain.join(30)


def _save_snapshot(connection: etcd.EtcdConnection, path: Path) -> None:
    """etcd's snapshot as etcdctl saves it: the database, then its SHA-256 (which the restore checks)."""
    with open(path, "xb") as file:
        for message in connection.snapshot():
            file.write(message.blob)
