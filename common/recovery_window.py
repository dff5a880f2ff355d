"""The recovery window: the revisions (and times) that the stored full backups and deltas can restore to, and the
gaps between them; and what the delta watcher keeps in Redis about itself (its counters, the gaps it saw).

Computed from names and metadata alone, never from the deltas' contents: cheap enough for every GET and scrape.
A restore reads and checks every delta it uses (recovery.pitr), so a damaged delta still stops that restore;
the window says what the store claims to hold, by the same rules as the restore's plan:

- A restore starts from a current full backup (not stale, not named in the future) with metadata; its
  snapshot holds a revision from `revision` to `revision_at_end`, so the earliest revision it restores to is
  the latter (its `at_most`).
- From it, deltas follow without a break: each one holds the revision after the last one reached.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis

from common import backups
from common.config import printable
from common.deltas import DeltaName, parse_delta_name
from common.etcd_seen import etcd_seen_at
from common.metadata import BackupMetadata
from common.metrics import read_watcher, skip_wrong_type
from common.redis_tools import text
from common.storage import BackupStore, CatalogEntry

logger = logging.getLogger(__name__)

STATS_KEY = "etcd-backup:deltas"
"""A Redis hash the watcher writes: events, bytes, deltas (counts), last_revision, current_at (Unix time as of
which every revision etcd had is stored, by the watcher's word: see recovery_point), gaps (count)."""
COUNTERS = ("events", "bytes", "deltas", "gaps")
"""The fields of STATS_KEY that only grow; each is there (from 0) as soon as a watcher has run."""
GAPS_KEY = "etcd-backup:delta-gaps"
"""A Redis list of the gaps etcd's compaction made, newest first, as JSON: {"from", "to", "time"}."""
MAX_GAPS_KEPT = 100
LEASE_KEY = "etcd-backup:delta-watcher"
"""The delta watcher's lease (a Redis lock, worker.deltas): held by the one watcher that writes, its value naming
it (lease_token)."""
LEASE_TTL = 15.0
"""Seconds the lease outlives a watcher that stopped renewing it (killed, cut off from Redis)."""
MAX_HOLDER_CHARACTERS = 200
"""Characters of the lease's value read: a watcher's is about 60; anyone who can write Redis writes the rest."""
COMPACTED = "etcd compacted them before the watcher stored them"
NOT_STORED = "no delta holds them (missing, or the watcher was not running)"


@dataclass(frozen=True)
class Point:
    """A restorable revision and when it was current (a backup's start, a delta's last revision's receipt)."""

    revision: int
    time: datetime

    def to_json(self) -> dict[str, object]:
        return {"revision": self.revision, "time": self.time.isoformat()}


@dataclass(frozen=True)
class Span:
    """The revisions `start`..`end` a restore reaches from `backup` and the deltas that follow it."""

    backup: str
    start: Point
    end: Point
    deltas: list[str]
    """The deltas that follow the backup, up to the next full backup's revision (where that one takes over)."""


@dataclass(frozen=True)
class Gap:
    first: int
    last: int
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"from": self.first, "to": self.last, "reason": self.reason}


@dataclass(frozen=True)
class RecordedGap:
    """A gap the watcher recorded: etcd compacted revisions `first`..`last` before they were stored."""

    first: int
    last: int
    time: float


@dataclass(frozen=True)
class Window:
    spans: list[Span]
    gaps: list[Gap] = field(default_factory=list)
    newest_delta: DeltaName | None = None
    """The stored delta that reaches the highest revision, whether a span reaches it or not: how far the watcher
    has stored."""

    @property
    def earliest(self) -> Point | None:
        return min((span.start for span in self.spans), key=lambda point: point.revision, default=None)

    @property
    def latest(self) -> Point | None:
        return max((span.end for span in self.spans), key=lambda point: point.revision, default=None)

    def to_json(self) -> dict[str, object]:
        return {
            "earliest": None if self.earliest is None else self.earliest.to_json(),
            "latest": None if self.latest is None else self.latest.to_json(),
            "gaps": [gap.to_json() for gap in self.gaps],
            "backups": [{"backup": span.backup, "from": span.start.to_json(), "to": span.end.to_json(),
                         "deltas": len(span.deltas)} for span in self.spans],
        }


def recovery_window(catalog: Sequence[CatalogEntry], delta_names: Sequence[str], now: datetime,
                    recorded: Sequence[RecordedGap] = ()) -> Window:
    """The window that the backups of `catalog` and the deltas named `delta_names` give."""
    bases = _bases(catalog, now)
    deltas = _Deltas(delta_names)
    spans = []
    for index, (name, metadata) in enumerate(bases):
        limit = _at_most(bases[index + 1][1]) if index + 1 < len(bases) else None
        chain = deltas.follow(metadata.revision, limit)
        start = Point(_at_most(metadata), datetime.fromisoformat(metadata.started))
        end = Point(chain[-1].last, chain[-1].last_seen) if chain and chain[-1].last > start.revision else start
        spans.append(Span(name, start, end, [str(said) for said in chain]))
    newest = max(deltas.sorted, key=lambda said: (said.last, said.last_seen), default=None)
    return Window(spans, _gaps(spans, recorded), newest)


def _bases(catalog: Sequence[CatalogEntry], now: datetime) -> list[tuple[str, BackupMetadata]]:
    """The backups a restore may start from, by revision."""
    usable = [(entry.name, entry.metadata) for entry in catalog if entry.metadata is not None
              and not backups.is_stale(entry.name) and not backups.is_future(entry.name, now)]
    return sorted(usable, key=lambda pair: (_at_most(pair[1]), pair[0]))


def _at_most(metadata: BackupMetadata) -> int:
    return max(metadata.revision_at_end or metadata.revision, metadata.revision)


class _Deltas:
    """The deltas by their first revision, for following chains without scanning them all for each backup."""

    def __init__(self, names: Sequence[str]) -> None:
        self.sorted = sorted(said for name in names if (said := parse_delta_name(name)) is not None)
        self.firsts = [said.first for said in self.sorted]
        self.furthest: list[int] = []
        """furthest[i]: the highest last revision of sorted[0..i]."""
        for said in self.sorted:
            self.furthest.append(max(said.last, self.furthest[-1] if self.furthest else 0))

    def follow(self, after: int, limit: int | None) -> list[DeltaName]:
        """The deltas that follow revision `after` without a break, until one reaches `limit` (if given)."""
        index = bisect.bisect_right(self.firsts, after + 1)
        while index > 0 and self.furthest[index - 1] > after:  # back to the first delta that reaches past `after`
            index -= 1
        chain: list[DeltaName] = []
        reached = after
        for said in self.sorted[index:]:
            if said.first > reached + 1 or (limit is not None and reached >= limit):
                break
            if said.last > reached:
                chain.append(said)
                reached = said.last
        return chain


CURRENT_SLACK_SECONDS = 1.0
"""How far past the time of the store's latest revision the watcher's current_at is believed on its word alone:
a delta's name holds its last revision's time rounded down to the second, current_at that time itself. Later
than that, a stopped watcher (or a value written by hand) and a watcher idle because etcd is look the same in
Redis; etcd's revision tells them apart (recovery_point)."""


@dataclass(frozen=True)
class RecoveryPoint:
    """As of when the store held every revision etcd had, and how long ago that was: what losing etcd now loses."""

    time: datetime
    seconds: float


def recovery_point(window: Window, claimed: float | None, now: datetime,
                   etcd_seen_at: Callable[[], tuple[int, float] | None]) -> RecoveryPoint | None:
    """The recovery point the store proves, from the time of its latest restorable revision (None if it has none).
    The watcher's current_at (`claimed`, from Redis: anyone who can write Redis can set it) makes it later only
    when credible: after the store's time, not after `now`, and at most CURRENT_SLACK_SECONDS past the store's
    time unless etcd was seen at the store's latest revision after the store's time (`etcd_seen_at`: etcd's
    revision and when a worker saw it, common.etcd_seen; asked only then, None if unknown): an idle cluster, whose
    watcher notes that it is current without storing anything. The point is then no later than that sighting:
    a write etcd took after it may be one the store lacks."""
    latest = window.latest
    if latest is None:
        return None
    stored, moment = latest.time.timestamp(), now.timestamp()
    if claimed is not None and math.isfinite(claimed) and stored < claimed <= moment:
        if claimed <= stored + CURRENT_SLACK_SECONDS:
            return RecoveryPoint(datetime.fromtimestamp(claimed, UTC), moment - claimed)
        seen = etcd_seen_at()
        if seen is not None and seen[0] == latest.revision and seen[1] > stored:
            believed = min(claimed, seen[1])
            return RecoveryPoint(datetime.fromtimestamp(believed, UTC), moment - believed)
    return RecoveryPoint(min(latest.time, now), max(0.0, moment - stored))


def _gaps(spans: list[Span], recorded: Sequence[RecordedGap]) -> list[Gap]:
    """The revisions between the earliest and the latest that no span reaches, each with why if it is known."""
    gaps = []
    reached = None
    for span in sorted(spans, key=lambda span: span.start.revision):
        if reached is not None and span.start.revision > reached + 1:
            first, last = reached + 1, span.start.revision - 1
            compacted = any(gap.first <= last and first <= gap.last for gap in recorded)
            gaps.append(Gap(first, last, COMPACTED if compacted else NOT_STORED))
        reached = max(reached or 0, span.end.revision)
    return gaps


def read_recorded_gaps(connection: redis.Redis) -> list[RecordedGap]:
    """The gaps the watcher recorded; an entry that is not what it writes is skipped (and logged)."""
    gaps = []
    for raw in skip_wrong_type(lambda: connection.lrange(GAPS_KEY, 0, MAX_GAPS_KEPT - 1), GAPS_KEY) or []:
        try:
            entry = json.loads(text(raw))
            gap = RecordedGap(entry["from"], entry["to"], entry["time"])
            if not (_count(gap.first) and _count(gap.last) and gap.first <= gap.last
                    and isinstance(gap.time, int | float) and math.isfinite(gap.time) and gap.time >= 0):
                raise ValueError("from and to must be revisions, from <= to, time a Unix time")
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            logger.warning("skipped a gap in %s that is not the watcher's (%r: %s)", GAPS_KEY, raw[:80], exc)
            continue
        gaps.append(gap)
    return gaps


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def lease_token(holder: str) -> str:
    """The value a watcher holds its lease with: `holder` (common.etcd_seen.reporter_name: role, host, process),
    for the person on call, and a random part, for the lock: two watchers of one process never share a token."""
    return f"{holder}/{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Reading:
    """What the store and Redis say of the deltas, read once: for GET /api/v1/recovery-window, `etcd-backup
    status` and the status page alike (common.status), so that each shows the same."""

    window: Window
    point: RecoveryPoint | None
    """None while no delta is stored and no watcher has noted it was current (deltas off, or not started)."""
    deltas: list[str]
    """The stored deltas' names."""
    watcher: dict[str, float]
    """The watcher's counters and times in Redis (STATS_KEY), each only if readable; empty: none has run."""
    lease_holder: str | None
    """Who holds the watcher's lease, as its value says (anyone who can write Redis can set it): printable."""
    redis: str
    """"ok", or why Redis could not be read ("embedded: ..." when there is none to read from here)."""
    etcd_seen: Callable[[], tuple[int, float] | None]
    """etcd's revision and when a worker saw it (common.etcd_seen.etcd_seen_at), asked only when shown."""

    @property
    def running(self) -> bool | None:
        """Whether a watcher holds the lease; None: Redis was not read."""
        return None if self.redis != "ok" else self.lease_holder is not None



def read(store: BackupStore, connection: redis.Redis | None, now: datetime,
         catalog: Sequence[CatalogEntry] | None = None, no_redis: str = "not read") -> Reading:
    """The recovery window and what Redis adds to it at `now`: `catalog` (the store's, if the caller has read it),
    `connection` None when there is no Redis to read from here (`no_redis` says why). While Redis does not answer,
    the window is still the store's: its gaps without the reason Redis would have told."""
    recorded: list[RecordedGap] = []
    watcher: dict[str, float] = {}
    holder = None
    state = no_redis
    if connection is not None:
        try:
            recorded, watcher, holder = read_recorded_gaps(connection), read_watcher(connection, STATS_KEY), \
                read_lease_holder(connection)
            state = "ok"
        except redis.RedisError as exc:
            logger.warning("recovery window without the watcher's records: Redis: %s", exc)
            state = f"unreachable: {exc}"
    names = store.list_deltas()
    window = recovery_window(store.catalog(now) if catalog is None else catalog, names, now, recorded)
    seen = etcd_seen_at(connection) if connection is not None and state == "ok" else lambda: None
    # From the store: Redis' current_at only moves it later where credible (recovery_point).
    point = recovery_point(window, watcher.get("current_at"), now, seen) if names or "current_at" in watcher else None
    return Reading(window, point, names, watcher, holder, state, seen)


def read_lease_holder(connection: redis.Redis) -> str | None:
    """The value of the watcher's lease while a watcher holds it (a TTL a watcher sets), else None. A key of
    another type, or one without a TTL, is no watcher's: the watchers delete the latter (worker.deltas)."""
    ttl = connection.pttl(LEASE_KEY)
    if not isinstance(ttl, int) or not 0 < ttl <= LEASE_TTL * 1000:
        return None
    raw = skip_wrong_type(lambda: connection.getrange(LEASE_KEY, 0, MAX_HOLDER_CHARACTERS - 1), LEASE_KEY)
    if raw is None:
        return None
    held = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    return printable(held) or "(an empty value)"
