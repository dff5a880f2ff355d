"""GET /metrics in Prometheus' text format: what the store holds (read on each scrape) and the
outcome counters that workers and schedulers keep in Redis (common.metrics)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from datetime import datetime

import redis
from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from rq.registry import FailedJobRegistry

from api.auth import TOKEN_RIGHTS
from api.state import State, state
from common import backups
from common.clock import redis_clock
from common.etcd_seen import etcd_seen_at
from common.metrics import read_drill, read_durations, read_outcomes, read_watcher, skip_wrong_type
from common.recovery_window import STATS_KEY, Window, recovery_point, recovery_window
from common.storage import CatalogEntry

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BackupCollector(state()))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class BackupCollector(Collector):
    def __init__(self, current: State) -> None:
        self.config = current.config
        self.queue = current.queue
        self.store = current.store

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("etcd_backup_api_auth_enabled",
                                "1 when the API needs a token; 0: anyone who reaches it can download every Secret.",
                                value=1 if self.config.tokens else 0)
        configured = GaugeMetricFamily("etcd_backup_api_token_configured",
                                       "1 for each API token set (api-token: every right; read-, backup-, "
                                       "download-token: scoped), 0 for those not set.", labels=["token"])
        for name in TOKEN_RIGHTS:
            configured.add_metric([name], 1 if name in self.config.tokens else 0)
        yield configured
        now = redis_clock(self.queue.connection)()
        entries = self.store.catalog(now)
        yield from self._from_store(now, entries)
        window = yield from self._from_deltas(now, entries)
        watcher = yield from self._from_redis(now)
        yield from self._recovery_point(now, entries, window, watcher)

    def _from_store(self, now: datetime, entries: list[CatalogEntry]) -> Iterator[Metric]:
        catalog = {entry.name: entry for entry in entries}
        names = list(catalog)
        yield GaugeMetricFamily("etcd_backup_backups_on_disk", "Backups in backup-dir.", value=len(catalog))
        yield GaugeMetricFamily("etcd_backup_backups_on_disk_bytes", "Bytes of the backups in backup-dir.",
                                value=sum(entry.stored.size for entry in catalog.values()))
        yield GaugeMetricFamily("etcd_backup_stale_backups",
                                "Backups from a member that could not prove it current (allow-stale-member).",
                                value=sum(1 for name in names if backups.is_stale(name)))
        future = sum(1 for name in names if backups.is_future(name, now))
        yield GaugeMetricFamily("etcd_backup_future_backups",
                                "Backups named in the future (a host's clock was ahead): never counted as the newest.",
                                value=future)
        newest_name = backups.newest(names, now)
        if newest_name is None:
            return
        newest = catalog[newest_name].metadata
        # Without metadata (refused, or a backup from before it was recorded), the name's time: as the status says,
        # and never absent, which no "too old" alert would see.
        named = backups.backup_time(newest_name)
        completed = newest.completed(now) if newest is not None else named
        assert completed is not None  # listed, so a backup name
        yield GaugeMetricFamily("etcd_backup_last_success_timestamp_seconds",
                                "When the newest backup was complete (Unix time): alert when it is too old.",
                                value=completed.timestamp())
        if newest is None:
            return
        yield GaugeMetricFamily("etcd_backup_last_size_bytes", "Size of the newest backup's archive.",
                                value=newest.filesize)
        yield GaugeMetricFamily("etcd_backup_last_revision", "etcd revision of the newest backup.",
                                value=newest.revision)
        yield GaugeMetricFamily("etcd_backup_last_db_size_bytes", "Size of the etcd database in the newest backup.",
                                value=newest.db_size)
        if newest.raft_term is not None:  # metadata from before it was recorded has none
            yield GaugeMetricFamily("etcd_backup_last_raft_term", "Raft term of the member the newest backup is from.",
                                    value=newest.raft_term)
            yield GaugeMetricFamily("etcd_backup_last_from_leader",
                                    "1 when the newest backup was streamed from the raft leader.",
                                    value=1 if newest.leader else 0)

    def _from_deltas(self, now: datetime, entries: list[CatalogEntry]) -> Generator[Metric, None, Window | None]:
        """What the stored deltas give (nothing while there are none: continuous backup is off); the window."""
        names = self.store.list_deltas()
        if not names:
            return None
        yield GaugeMetricFamily("etcd_backup_deltas_stored", "Deltas (etcd's events between full backups) stored.",
                                value=len(names))
        window = recovery_window(entries, names, now)
        yield GaugeMetricFamily("etcd_backup_recovery_window_gaps",
                                "Gaps in the recovery window: revisions between the earliest and the latest restorable "
                                "that no backup or delta holds.", value=len(window.gaps))
        if window.earliest is not None and window.latest is not None:
            yield GaugeMetricFamily("etcd_backup_recovery_window_earliest_revision",
                                    "The earliest revision a restore can reach.", value=window.earliest.revision)
            yield GaugeMetricFamily("etcd_backup_recovery_window_latest_revision",
                                    "The latest revision a restore can reach.", value=window.latest.revision)
        return window

    def _recovery_point(self, now: datetime, entries: list[CatalogEntry], window: Window | None,
                        watcher: dict[str, float]) -> Iterator[Metric]:
        """The recovery point, from the store (Redis' current_at only where credible: recovery_point), while deltas
        are stored or a watcher has run; also while Redis does not answer."""
        if window is None and "current_at" not in watcher:
            return
        point = recovery_point(window or recovery_window(entries, [], now), watcher.get("current_at"), now,
                               etcd_seen_at(self.queue.connection))
        if point is None:
            return
        yield GaugeMetricFamily("etcd_backup_delta_current_timestamp_seconds",
                                "Unix time as of which every revision etcd had was stored in a delta.",
                                value=point.time.timestamp())
        yield GaugeMetricFamily("etcd_backup_recovery_point_seconds",
                                "Seconds since the deltas were last current (what losing etcd now would lose): alert "
                                "when above delta-period plus a few seconds.", value=point.seconds)

    def _from_redis(self, now: datetime) -> Generator[Metric, None, dict[str, float]]:
        connection = self.queue.connection
        failed_jobs = FailedJobRegistry(queue=self.queue)
        try:
            # A bad value (or a key of the wrong type) leaves its metric out, logged; the rest is scraped.
            outcomes = read_outcomes(connection)
            durations = read_durations(connection)
            depth = skip_wrong_type(lambda: self.queue.count, self.queue.key)
            failed = skip_wrong_type(lambda: failed_jobs.count, failed_jobs.key)
            drill = read_drill(connection)
            watcher = read_watcher(connection, STATS_KEY)
            memory = _read_memory(connection)
        except redis.RedisError:
            yield GaugeMetricFamily("etcd_backup_redis_up", "Whether Redis answered this scrape.", value=0)
            return {}
        yield GaugeMetricFamily("etcd_backup_redis_up", "Whether Redis answered this scrape.", value=1)
        yield from _redis_memory(memory)
        counter = CounterMetricFamily("etcd_backup_backups", "Backups by outcome (success, failure, skipped).",
                                      labels=["outcome"])
        for outcome, count in outcomes.items():
            counter.add_metric([outcome], count)
        yield counter
        if durations is not None:
            yield HistogramMetricFamily("etcd_backup_duration_seconds", "Duration of successful backups.",
                                        buckets=durations[0], sum_value=durations[1])
        if depth is not None:
            yield GaugeMetricFamily("etcd_backup_queue_depth", "Backup jobs waiting for a worker.", value=depth)
        if failed is not None:
            yield GaugeMetricFamily("etcd_backup_failed_jobs", "Failed backup jobs kept in RQ (for a day).",
                                    value=failed)
        yield from _watcher_metrics(watcher)
        if "time" in drill:
            yield GaugeMetricFamily("etcd_backup_last_drill_timestamp_seconds", "When the last restore drill ended.",
                                    value=drill["time"])
        if "passed" in drill:
            yield GaugeMetricFamily("etcd_backup_last_drill_passed", "Whether the last restore drill passed (1).",
                                    value=drill["passed"])
        if "last_success" in drill:
            yield GaugeMetricFamily("etcd_backup_last_drill_success_timestamp_seconds",
                                    "When a restore drill last proved the newest backup restores.",
                                    value=drill["last_success"])
        return watcher


REDIS_MEMORY = {
    "used_memory": ("etcd_backup_redis_used_memory_bytes", "Memory Redis uses for its data (INFO memory)."),
    "maxmemory": ("etcd_backup_redis_maxmemory_bytes",
                  "Redis' maxmemory (0: none). Beyond it, with noeviction, writes fail: no new backup job is queued."),
}


def _read_memory(connection: redis.Redis) -> object:
    try:
        return connection.info("memory")
    except redis.ResponseError:  # the embedded queue (an in-process Redis) has no INFO, nor a memory bound
        return None


def _redis_memory(info: object) -> Iterator[Metric]:
    """Redis' memory and its bound, for an alert before it is full (Redis has no exporter of its own here)."""
    for field, (name, documentation) in REDIS_MEMORY.items():
        value = info.get(field) if isinstance(info, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            yield GaugeMetricFamily(name, documentation, value=value)


WATCHER_COUNTERS = {
    "events": ("etcd_backup_delta_events", "etcd events the delta watcher stored."),
    "bytes": ("etcd_backup_delta_bytes", "Bytes of deltas stored (compressed, encrypted)."),
    "deltas": ("etcd_backup_deltas_written", "Deltas the delta watcher stored."),
    "gaps": ("etcd_backup_delta_gaps", "Gaps: revisions etcd compacted before the delta watcher stored them."),
}


def _watcher_metrics(watcher: dict[str, float]) -> Iterator[Metric]:
    """The delta watcher's counters, each one only if Redis holds a readable value (its recovery point is the
    store's: BackupCollector._recovery_point)."""
    for field, (name, documentation) in WATCHER_COUNTERS.items():
        if field in watcher:
            yield CounterMetricFamily(name, documentation, value=watcher[field])
    if "last_revision" in watcher:
        yield GaugeMetricFamily("etcd_backup_delta_last_revision", "The last revision the delta watcher stored.",
                                value=watcher["last_revision"])
