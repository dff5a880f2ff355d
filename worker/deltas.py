"""The delta watcher: watches etcd from the newest full backup on, and stores its events as deltas
(common.deltas) every delta-period, or sooner when they reach MAX_DELTA_BYTES.

- One watcher per cluster writes: it holds a Redis lease (LEASE_KEY); others wait for it to lapse.
- It starts after the newest of: the newest full backup's revision, the last stored delta's last revision.
  So a watcher killed mid-batch (its events in memory lost) resumes where the store ends: no gap, no duplicate.
- etcd compacted the revision it needs: the gap is recorded (Redis, the log), a full backup is queued, and
  the watch starts again at the oldest revision etcd still has (the new backup's deltas follow from it).
- Two histories never mix: the watch starts one revision early, at the last stored one, and its events are
  compared with the fingerprint the watcher recorded when it stored it (Redis). etcd restored to an earlier
  revision (or another cluster) and written past the deltas gives other events there: a gap is recorded, a
  full backup queued, and deltas go on only after it. Each delta also holds that fingerprint, so a restore
  never chains two histories even when Redis forgot it (common.deltas).
- Any backlog is caught up: etcd sends up to 1,000 revisions in one watch response, and the watch asks it to split
  one larger than its --max-request-bytes (+ 512 KiB) into fragments (etcd >= 3.4), which may cut a revision
  anywhere: a revision is stored, and fingerprinted, only once all its events came (_WholeRevisions).
- Each put keeps its lease: the delta records the lease ID etcd's watch gives, and the TTL that lease was granted,
  asked of etcd (LeaseTimeToLive) the first time the watcher sees the lease (_GrantedTTLs); a lease gone by then
  is recorded as such (TTL 0). A point-in-time restore grants those leases again (recovery.pitr).
- Memory is bounded: the responses waiting for the writer hold at most WATCH_QUEUE_BYTES (one more if larger, up to
  etcd.MAX_RECEIVE_BYTES), and the events held are written at MAX_DELTA_BYTES; and it is given back after a burst
  of large values (return_large_buffers).
"""

from __future__ import annotations

import ctypes
import json
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import grpc
import redis
from etcd3 import etcdrpc
from redis.exceptions import LockError

from common import backups, etcd, protowire
from common.clock import Clock, redis_clock
from common.config import Config
from common.deltas import (
    MAX_DELTA_BYTES,
    NO_FINGERPRINT,
    Event,
    Fingerprint,
    Revision,
    delta_name,
    encode_delta,
    event_from_watch,
    fingerprint,
    parse_delta_name,
    parse_fingerprint,
)
from common.encryption import parse_recipient
from common.etcd_seen import reporter_name
from common.queue import enqueue_or_join, job_queue
from common.recovery_window import COUNTERS, GAPS_KEY, LEASE_KEY, LEASE_TTL, MAX_GAPS_KEPT, STATS_KEY, lease_token
from common.storage import BackupStore, StorageError, open_store
from worker.leases import clear_unexpiring_lease

logger = logging.getLogger(__name__)

LEASE_RENEWAL = LEASE_TTL / 3
"""A watcher renews its lease this often: a delta-period longer than LEASE_TTL must not let it lapse."""
WATCH_QUEUE_BYTES = 4 << 20
"""Bytes of watch responses received ahead of the writer: the reader waits beyond this (memory stays bounded). It
only has to cover the writer storing a delta (about 0.2 s: under 1 MiB at 3,000 puts of 1 KiB a second); each
response in it holds its events parsed, on top of gRPC's own copy of the one being read (bench.deltas: a burst of
100 values of a MiB took the watcher from 94 to 198 MB with 16 MiB here)."""
RETRY_SECONDS = 2.0
"""How long a watcher waits before trying again after etcd or the store failed it."""
LARGE_BUFFER_BYTES = 256 << 10
"""Buffers this large or larger are mapped apart and returned to the system when freed (return_large_buffers)."""
_M_MMAP_THRESHOLD = -3
"""glibc's mallopt() parameter (malloc.h)."""
LEASES_REMEMBERED = 65536
"""Leases whose granted TTL the watcher remembers (the least recently seen forgotten first: asked again if seen)."""
class LeaseLost(Exception):
    """Another watcher holds the lease now: this one must stop writing."""


class AheadOfEtcd(Exception):
    """The store reaches past etcd's current revision: the deltas' history is not etcd's (any more)."""


class AnotherHistory(Exception):
    """etcd's revision `revision` is not the one the watcher stored: etcd's history is not the deltas' any more."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"etcd's revision {revision} is not the one stored in the last delta")
        self.revision = revision


class Compacted(Exception):
    """etcd compacted the revision the watch needs: the oldest it still has is `revision`."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"etcd compacted up to revision {revision}")
        self.revision = revision


def run_watcher(config: Config, connection: redis.Redis, stop: threading.Event) -> None:
    """Watch and store deltas until `stop` is set, whenever this process holds the lease."""
    return_large_buffers()
    lease = connection.lock(LEASE_KEY, timeout=LEASE_TTL, thread_local=False)
    warned = False
    while not stop.is_set():
        if _cleared(connection) and not warned:
            logger.warning("delta watcher: %s had no TTL (or one past %gs): not a live watcher's lease (set by hand?); "
                           "deleted it and took the lease", LEASE_KEY, LEASE_TTL)
            warned = True
        # Its value names this process: `etcd-backup status` and the page say who holds the lease.
        if not lease.acquire(blocking=False, token=lease_token(reporter_name("delta-watcher"))):
            stop.wait(LEASE_TTL / 3)
            continue
        logger.info("delta watcher: holding the lease, watching etcd")
        try:
            _watch_while_leased(config, connection, lease, stop)
        finally:
            try:
                lease.release()
            except LockError:
                pass


def return_large_buffers() -> bool:
    """Have glibc's malloc give every buffer of LARGE_BUFFER_BYTES or more its own mapping, returned to the system
    when freed; whether it could (not glibc: nothing to do). By default glibc raises that threshold to the largest
    buffer freed so far (up to 32 MiB): after a burst of 1 MiB values, the watcher's gRPC messages, batches and
    compressed deltas came from the heap, which is not given back: measured 112 MB after one burst, 224 after the
    next, against a flat 97 with the threshold fixed (tests/test_deltas_backlog.py). Process-wide; the threshold
    fixed at about glibc's own starting value."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES))


def _cleared(connection: redis.Redis) -> bool:
    """Whether the lease key was there without a TTL a watcher sets (no watcher would ever release it), and is
    gone now: whoever could write Redis must not stop every watcher for good."""
    try:
        return clear_unexpiring_lease(connection, LEASE_KEY, LEASE_TTL)
    except redis.RedisError:  # the acquire that follows meets Redis' failure too
        return False


def start_thread_watcher(config: Config, connection: redis.Redis) -> tuple[threading.Thread, threading.Event]:
    """The watcher on a thread of its own (the all-in-one's); set the event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=run_watcher, args=(config, connection, stop), name="delta-watcher", daemon=True)
    thread.start()
    return thread, stop


def _watch_while_leased(config: Config, connection: redis.Redis, lease: redis.lock.Lock,
                        stop: threading.Event) -> None:
    store = open_store(config)
    oldest_kept, start, said, old_history_end = 0, 0, "", 0
    """oldest_kept: after a compaction, the oldest revision etcd still has, where the watch goes on.
    old_history_end: the last revision stored of a history etcd no longer has: the watch waits for a backup past it."""
    while not stop.is_set():
        try:
            _counters_from_zero(connection)
            resume = resume_revision(config, store, connection)
            if resume is None or resume <= old_history_end + 1:  # no full backup past the old history yet
                stop.wait(config.delta_period)
                continue
            start = max(resume, oldest_kept)
            _watch_from(config, store, connection, lease, stop, start, known_from=oldest_kept)
        except LeaseLost as exc:
            logger.warning("delta watcher: %s; stopped writing", exc)
            return
        except Compacted as exc:
            if exc.revision > start:  # at `start` itself: only the revision before it (the fingerprint) is gone
                _record_gap(connection, start, exc.revision)
            oldest_kept = exc.revision
        except AnotherHistory as exc:
            _record_new_history(connection, exc.revision)
            old_history_end = exc.revision
        except AheadOfEtcd as exc:  # stays so until someone acts: said once, not every RETRY_SECONDS
            if str(exc) != said:
                logger.error("delta watcher: %s", exc)
                said = str(exc)
            stop.wait(RETRY_SECONDS)
        except (etcd.EtcdUnavailable, grpc.RpcError, StorageError, redis.RedisError) as exc:
            logger.error("delta watcher: %s; trying again in %gs", _describe(exc, config), RETRY_SECONDS)
            stop.wait(RETRY_SECONDS)
        except Exception:  # a watcher that stops is a recovery point that silently grows: log it, go on
            logger.exception("delta watcher: broke; trying again in %gs", RETRY_SECONDS)
            stop.wait(RETRY_SECONDS)


def resume_revision(config: Config, store: BackupStore, connection: redis.Redis) -> int | None:
    """The revision to watch from: after the newest full backup and the last stored delta. None (a full
    backup queued) if there is no full backup to start from."""
    now = redis_clock(connection)()
    newest = backups.newest(store.list_backups(), now)
    metadata = store.read_metadata(newest) if newest is not None else None
    if metadata is None:
        job = enqueue_or_join(job_queue(connection))
        logger.warning("delta watcher: no full backup with metadata to follow; queued one (job %s)", job.id)
        return None
    stored = [said.last for name in store.list_deltas() if (said := parse_delta_name(name)) is not None]
    after_deltas = max((last for last in stored if last >= metadata.revision), default=metadata.revision)
    return max(metadata.revision, after_deltas) + 1


@dataclass
class _Batch:
    """The revisions received and not yet stored."""

    revisions: list[Revision] = field(default_factory=list)
    size: int = 0

    def add(self, revision: Revision) -> None:
        self.revisions.append(revision)
        self.size += sum(len(event.key) + len(event.value) + 32 for event in revision.events)


def _watch_from(config: Config, store: BackupStore, connection: redis.Redis, lease: redis.lock.Lock,
                stop: threading.Event, start: int, known_from: int) -> None:
    """Watch from revision `start`, storing a delta every delta-period (or at MAX_DELTA_BYTES), until `stop`."""
    with etcd.connect(config.etcd) as member:
        current = member.proof.cluster_revision
        if start > current + 1:
            raise AheadOfEtcd(f"the stored backups and deltas reach revision {start - 1}, past etcd's {current}: "
                              "etcd was restored to an earlier revision, or they are another cluster's. Storing none "
                              "until they are gone: move the deltas (and backups) past revision "
                              f"{current} out of the store; the watcher then goes on from the newest backup left "
                              "(take a full backup now if there is none)")
        _watch_and_store(config, store, connection, lease, stop, member, start, known_from)


def _watch_and_store(config: Config, store: BackupStore, connection: redis.Redis, lease: redis.lock.Lock,
                     stop: threading.Event, member: etcd.EtcdConnection, start: int, known_from: int) -> None:
    """Watch from `start`, one revision early (its fingerprint checked and kept in the next delta) unless etcd
    compacted it (`start` is then `known_from`: the delta after a gap has no previous revision to match)."""
    recipients = [parse_recipient(key) for key in config.encryption.recipients] if config.encryption else []
    clock = _seconds(redis_clock(connection))
    unknown = start <= known_from
    with _watch(member, start if unknown else start - 1) as responses:
        logger.info("delta watcher: watching %s from revision %d", member.endpoint, start)
        batch, last_seen, whole, ttls = _Batch(), start - 1, _WholeRevisions(), _GrantedTTLs(member, config)
        previous = Fingerprint(start - 1, NO_FINGERPRINT) if unknown else None
        deadline = time.monotonic() + config.delta_period
        renew_at = time.monotonic() + LEASE_RENEWAL
        while not stop.is_set():
            response = responses.get(timeout=max(0.0, min(deadline, renew_at) - time.monotonic()))
            if time.monotonic() >= renew_at:
                _renew(lease)
                renew_at = time.monotonic() + LEASE_RENEWAL
            if isinstance(response, BaseException):
                raise response
            if response is not None:
                _check_not_cancelled(response.message)
                for revision in whole.take(response, seen=clock()):
                    previous = previous or _checked_previous(connection, revision, start - 1)
                    if revision.number > last_seen:  # never twice: a revision the watch already gave
                        batch.add(ttls.added(revision))
                        last_seen = revision.number
            # The batch holds whole revisions only (a revision still coming in fragments is in `whole`): a delta
            # written here never cuts one in two.
            if batch.size >= MAX_DELTA_BYTES or time.monotonic() >= deadline:
                previous = _store(store, connection, lease, batch, previous, recipients)
                if responses.empty():
                    _note_if_current(member, connection, last_seen, config, clock)
                batch, deadline = _Batch(), time.monotonic() + config.delta_period
        _store(store, connection, lease, batch, previous, recipients)  # what was received before the stop


def _checked_previous(connection: redis.Redis, first: Revision, revision: int) -> Fingerprint:
    """The fingerprint of `revision`, where the watch starts, from `first`, the first whole revision it gave (a later
    one: `revision` had no events); AnotherHistory if the watcher stored another one there."""
    found = fingerprint(revision, first.events if first.number == revision else ())
    recorded = parse_fingerprint(_text(connection.hget(STATS_KEY, "last_fingerprint")))
    if recorded is not None and recorded.revision == revision and recorded != found:
        raise AnotherHistory(revision)
    return found


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


def _renew(lease: redis.lock.Lock) -> None:
    """Give the lease LEASE_TTL more seconds; LeaseLost if it lapsed meanwhile (another watcher may hold it)."""
    try:
        lease.reacquire()
    except LockError:
        raise LeaseLost("the lease lapsed before it was renewed") from None


def _check_not_cancelled(response: etcdrpc.WatchResponse) -> None:
    """Compacted, or EtcdUnavailable, if etcd cancelled the watch with `response`."""
    if response.canceled:
        if response.compact_revision:
            raise Compacted(int(response.compact_revision))
        raise etcd.EtcdUnavailable(f"etcd cancelled the watch: {response.cancel_reason or 'no reason given'}")


@dataclass(frozen=True)
class _Received:
    """A watch response, with what etcd3's protos (etcd 3.3's) cannot say: whether it is a fragment."""

    message: etcdrpc.WatchResponse
    fragment: bool
    """More of its response follows: etcd (>= 3.4, asked to) split a response larger than its --max-request-bytes
    (+ 512 KiB)."""
    size: int

    @classmethod
    def parse(cls, data: bytes) -> _Received:
        return cls(etcdrpc.WatchResponse.FromString(data), _is_fragment(data), len(data))


_FRAGMENT_FIELD = 7
"""WatchResponse's `bool fragment = 7` (etcd >= 3.4)."""
_ASK_FOR_FRAGMENTS = b"\x40\x01"
"""WatchCreateRequest's `bool fragment = 8` (etcd >= 3.4), true, on the wire: field 8, a varint (8 << 3 | 0), 1.
An etcd older than 3.4 ignores it, as any field it does not know."""


def _is_fragment(data: bytes) -> bool:
    """WatchResponse's `fragment` from the message's wire form: etcd3's protos do not know the field. Only the
    top-level fields are walked (the events are skipped by their length); etcd writes them in field order, so
    `fragment` comes before the events. A cut message raises ValueError: gRPC reports the deserialization as
    failed."""
    for number, wire_type, value in protowire.fields(data):
        if number == _FRAGMENT_FIELD and wire_type == protowire.VARINT:
            return value != 0
    return False


class _WholeRevisions:
    """The whole revisions in a sequence of watch responses.

    etcd batches whole revisions into a response (up to 1,000); asked to, it splits one larger than its
    --max-request-bytes (+ 512 KiB) into fragments, at whichever event reaches that size: a revision's events may be
    in two fragments, or more. A response that is not a fragment (the last of a split one is not) ends with a whole
    revision; the last revision of a fragment is held until the next response, which may have more of it."""

    def __init__(self) -> None:
        self._number = 0
        self._events: list[Event] = []

    def take(self, response: _Received, seen: float) -> list[Revision]:
        """The revisions `response`, received at `seen` (Unix time, Redis' clock), completes, in order."""
        complete = []
        for event in response.message.events:
            number = int(event.kv.mod_revision)
            if number != self._number and self._events:
                complete.append(Revision(self._number, seen, tuple(self._events)))
                self._events = []
            self._number = number
            self._events.append(event_from_watch(event))
        if not response.fragment and self._events:
            complete.append(Revision(self._number, seen, tuple(self._events)))
            self._events = []
        return complete


class _GrantedTTLs:
    """The TTL each lease was granted, asked of etcd once per lease (LeaseTimeToLive), for the deltas' puts: a
    restore grants the lease again with it. 0 for a lease gone when asked (revoked, or expired: etcd no longer
    says its TTL; a watcher catching up a backlog asks late)."""

    def __init__(self, member: etcd.EtcdConnection, config: Config) -> None:
        self._member = member
        self._timeout = config.etcd.timeout
        self._known: OrderedDict[int, int] = OrderedDict()

    def added(self, revision: Revision) -> Revision:
        """`revision`, each of its puts with a lease given the TTL that lease was granted."""
        if not any(event.lease for event in revision.events):
            return revision
        return replace(revision, events=tuple(replace(event, lease_ttl=self._granted(event.lease)) if event.lease
                                              else event for event in revision.events))

    def _granted(self, lease: int) -> int:
        if lease in self._known:
            self._known.move_to_end(lease)
            return self._known[lease]
        answer = etcdrpc.LeaseStub(self._member.channel).LeaseTimeToLive(
            etcdrpc.LeaseTimeToLiveRequest(ID=lease), metadata=self._member.metadata, timeout=self._timeout)
        granted = int(answer.grantedTTL) if int(answer.TTL) != -1 else 0  # -1: etcd has no such lease (any more)
        self._known[lease] = max(granted, 0)
        if len(self._known) > LEASES_REMEMBERED:
            self._known.popitem(last=False)
        return self._known[lease]


def _store(store: BackupStore, connection: redis.Redis, lease: redis.lock.Lock, batch: _Batch,
           previous: Fingerprint | None, recipients: list[object]) -> Fingerprint | None:
    """Store `batch` as a delta after `previous`; return the fingerprint of its last revision (the next one's)."""
    if not batch.revisions:
        return previous
    assert previous is not None, "revisions past the first were received before it"
    if not lease.owned():
        raise LeaseLost("lost the lease to another watcher")
    # The lease can lapse between that check and the write: the store's newest delta tells whether another
    # watcher has stored these revisions meanwhile (restore takes one of two agreeing copies if it still happens).
    stored = max((said.last for name in store.list_deltas() if (said := parse_delta_name(name)) is not None),
                 default=0)
    if stored >= batch.revisions[0].number:
        raise LeaseLost(f"another watcher has stored up to revision {stored}, past {batch.revisions[0].number}")
    data = encode_delta(previous, batch.revisions, recipients)
    last = fingerprint(batch.revisions[-1].number, batch.revisions[-1].events)
    name = str(delta_name(batch.revisions, encrypted=bool(recipients)))
    name = store.put_delta(name, data)
    events = sum(len(revision.events) for revision in batch.revisions)
    with connection.pipeline() as pipe:
        pipe.hincrby(STATS_KEY, "events", events)
        pipe.hincrby(STATS_KEY, "bytes", len(data))
        pipe.hincrby(STATS_KEY, "deltas", 1)
        pipe.hset(STATS_KEY, mapping={"last_revision": batch.revisions[-1].number, "last_fingerprint": str(last),
                                      "current_at": batch.revisions[-1].seen})
        pipe.execute()
    logger.info("delta watcher: stored %s (%d events, %d bytes)", name, events, len(data))
    return last


def _note_if_current(member: etcd.EtcdConnection, connection: redis.Redis, last_seen: int, config: Config,
                     clock: Callable[[], float]) -> None:
    """With nothing left to store, check that etcd has no revision the watch has not given: then the store
    is current as of now (an idle cluster's recovery point does not age)."""
    asked = clock()
    answer = etcdrpc.KVStub(member.channel).Range(etcdrpc.RangeRequest(key=etcd.PROBE_KEY),
                                                  metadata=member.metadata, timeout=config.etcd.timeout)
    if int(answer.header.revision) <= last_seen:
        connection.hset(STATS_KEY, "current_at", asked)


class _Responses:
    """The watch responses received ahead of the writer, WATCH_QUEUE_BYTES of them at most (or a single larger one):
    put() waits for room, so memory stays bounded however far behind the writer is (a catch-up of a backlog)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[tuple[_Received | BaseException, int]] = deque()
        self._bytes = 0
        self._closed = False
        self._changed = threading.Condition()

    def put(self, item: _Received | BaseException, size: int = 0) -> None:
        """Queue `item` once there is room (at once once closed: dropped)."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or not self._items or self._bytes + size <= self._capacity)
            if self._closed:
                return
            self._items.append((item, size))
            self._bytes += size
            self._changed.notify_all()

    def get(self, timeout: float) -> _Received | BaseException | None:
        """The oldest item, or None if none came within `timeout` seconds."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._items, timeout):
                return None
            item, size = self._items.popleft()
            self._bytes -= size
            self._changed.notify_all()
            return item

    def empty(self) -> bool:
        with self._changed:
            return not self._items

    def close(self) -> None:
        """Drop what is queued and whatever is put from now on: a reader waiting for room goes on."""
        with self._changed:
            self._closed = True
            self._items.clear()
            self._bytes = 0
            self._changed.notify_all()


@contextmanager
def _watch(member: etcd.EtcdConnection, start: int) -> Iterator[_Responses]:
    """etcd's watch of the whole keyspace from revision `start`, in fragments (at most etcd's --max-request-bytes
    + 512 KiB each, or a single event), its responses received on a thread of their own into a bounded queue
    (an error ends it, queued after the responses before it)."""
    create = etcdrpc.WatchCreateRequest(key=b"\0", range_end=b"\0", start_revision=start)
    # etcd3's WatchCreateRequest has no `fragment`: parsed back with it appended, the message keeps it as an unknown
    # field, which protobuf (proto3, >= 3.5) sends on as it is.
    create = etcdrpc.WatchCreateRequest.FromString(create.SerializeToString() + _ASK_FOR_FRAGMENTS)
    requests: queue.Queue[etcdrpc.WatchRequest | None] = queue.Queue()
    requests.put(etcdrpc.WatchRequest(create_request=create))
    watch = member.channel.stream_stream("/etcdserverpb.Watch/Watch",
                                         request_serializer=etcdrpc.WatchRequest.SerializeToString,
                                         response_deserializer=_Received.parse)
    stream = watch(iter(requests.get, None), metadata=member.metadata)
    responses = _Responses(WATCH_QUEUE_BYTES)

    def receive() -> None:
        try:
            for response in stream:
                responses.put(response, response.size)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                responses.put(exc)

    reader = threading.Thread(target=receive, name="delta-watch", daemon=True)
    reader.start()
    try:
        yield responses
    finally:
        stream.cancel()
        requests.put(None)
        responses.close()  # a reader waiting for room goes on, to the end of the cancelled stream
        reader.join()


def _record_gap(connection: redis.Redis, wanted: int, oldest: int) -> None:
    """etcd no longer has revisions `wanted`..`oldest - 1`: record the gap, queue a full backup (the deltas go
    on from `oldest`, and the new backup's revision will be past it)."""
    job = enqueue_or_join(job_queue(connection))
    gap = {"from": wanted, "to": oldest - 1, "time": time.time()}
    _push_gap(connection, gap)
    logger.error("delta watcher: etcd compacted revisions %d to %d before they were stored: no restore can reach "
                 "them; queued a full backup (job %s), watching on from revision %d", wanted, oldest - 1, job.id,
                 oldest)


def _record_new_history(connection: redis.Redis, last_stored: int) -> None:
    """etcd's history is not the stored deltas' after `last_stored`: record a gap from there, queue a full backup;
    the deltas of etcd's history follow that backup."""
    job = enqueue_or_join(job_queue(connection))
    gap = {"from": last_stored + 1, "to": last_stored + 1, "time": time.time(), "reason": "another history"}
    _push_gap(connection, gap)
    logger.error("delta watcher: etcd's revision %d is not the one the last delta stored: etcd was restored to an "
                 "earlier revision, or is another cluster. A new history: no delta will follow the old ones (a restore "
                 "reaches revision %d at most through them); queued a full backup (job %s), the deltas go on after it",
                 last_stored, last_stored, job.id)


def _counters_from_zero(connection: redis.Redis) -> None:
    """Each counter at 0 unless it counts already: /metrics exports a counter once it is in Redis, and the increase
    from a counter's first sample is none to Prometheus (the first gap would never raise the gap alert)."""
    with connection.pipeline() as pipe:
        for field in COUNTERS:
            pipe.hsetnx(STATS_KEY, field, 0)
        pipe.execute()


def _push_gap(connection: redis.Redis, gap: Mapping[str, object]) -> None:
    """Keep `gap` in Redis (the newest MAX_GAPS_KEPT) and count it."""
    with connection.pipeline() as pipe:
        pipe.lpush(GAPS_KEY, json.dumps(gap))
        pipe.ltrim(GAPS_KEY, 0, MAX_GAPS_KEPT - 1)
        pipe.hincrby(STATS_KEY, "gaps", 1)
        pipe.execute()


def _seconds(clock: Clock) -> Callable[[], float]:
    """`clock` as Unix time. The watcher's times are Redis' (common.clock), as the backups' are: --to-time picks
    deltas and backups by them, and a watcher whose host clock is an hour off would pick the wrong side of an
    incident."""
    return lambda: clock().timestamp()


def _describe(exc: Exception, config: Config) -> str:
    if isinstance(exc, grpc.RpcError):
        said = f"etcd's watch failed: {etcd.describe_rpc_error(exc, config.etcd.timeout)}"
        if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            said += (f" (a watch response over {etcd.MAX_RECEIVE_BYTES >> 20} MiB: an etcd older than 3.4 does not "
                     "split one into fragments, or its --max-request-bytes lets a single value be that large)")
        return said
    return str(exc)
