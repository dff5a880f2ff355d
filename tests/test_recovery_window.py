"""The recovery window (GET /api/v1/recovery-window, ?detail=true's deltas, the watcher's /metrics): from names and
metadata alone, then against a real etcd, Redis and watcher on both backends."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from common.deltas import DeltaName
from common.metadata import BackupMetadata
from common.recovery_window import (
    COMPACTED,
    GAPS_KEY,
    NOT_STORED,
    STATS_KEY,
    RecordedGap,
    recovery_point,
    recovery_window,
)
from common.storage import CatalogEntry, StoredFile
from harness.in_process import Service
from harness.servers import EtcdServer
from tests.test_deltas import deltas_during_writes

T0 = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=1)


def entry(name: str, revision: int, at_end: int | None = None, metadata: bool = True) -> CatalogEntry:
    started = datetime.strptime(name[9:24], "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    recorded = BackupMetadata(name, 1, "c", "m", "e", revision, "3.4.23", 1, "0" * 64, started.isoformat(), 0.1,
                              revision_at_end=at_end)
    return CatalogEntry(name, StoredFile(1, 0.0, "etag"), recorded if metadata else None)


def delta(first: int, last: int, minutes: int = 0) -> str:
    seen = T0 + timedelta(minutes=minutes)
    return str(DeltaName(first, last, seen, seen, encrypted=False))


CATALOG = [
    entry("snapshot-20261127_060000.tar.gz", 100),
    entry("snapshot-20261127_070000.tar.gz", 200, at_end=205),  # taken while etcd was written to
    entry("snapshot-20261127_073000.stale.tar.gz", 220),  # a restore never starts from a stale backup
    entry("snapshot-20261127_074000.tar.gz", 225, metadata=False),  # nor from one without metadata
    entry("snapshot-20261127_080000.tar.gz", 300),
]
DELTAS = [delta(101, 150, 1), delta(140, 160, 2), delta(151, 210, 3), delta(211, 230, 4), delta(240, 250, 5),
          delta(301, 320, 6), "delta-not-ours.bin.gz"]


def test_the_window_from_names_and_metadata() -> None:
    window = recovery_window(CATALOG, DELTAS, NOW)
    assert window.earliest is not None and window.latest is not None
    assert (window.earliest.revision, window.earliest.time) == (100, T0)
    assert (window.latest.revision, window.latest.time) == (320, T0 + timedelta(minutes=6))
    spans = {span.backup[9:24]: span for span in window.spans}
    assert list(spans) == ["20261127_060000", "20261127_070000", "20261127_080000"]
    # Overlapping deltas (two writers) are followed; the first backup's deltas stop where the next one takes over.
    assert spans["20261127_060000"].deltas == [delta(101, 150, 1), delta(140, 160, 2), delta(151, 210, 3)]
    assert spans["20261127_070000"].start.revision == 205  # its snapshot may hold up to revision_at_end
    assert spans["20261127_070000"].deltas == [delta(151, 210, 3), delta(211, 230, 4)]
    assert spans["20261127_070000"].end.revision == 230  # 231 is in no delta: 240..250 follow no backup
    assert [(gap.first, gap.last, gap.reason) for gap in window.gaps] == [(231, 299, NOT_STORED)]


def test_a_gap_the_watcher_recorded_says_etcd_compacted_it() -> None:
    window = recovery_window(CATALOG, DELTAS, NOW, [RecordedGap(231, 280, 0.0), RecordedGap(5, 10, 0.0)])
    assert [(gap.first, gap.last, gap.reason) for gap in window.gaps] == [(231, 299, COMPACTED)]


def test_no_backup_no_window() -> None:
    window = recovery_window([], DELTAS, NOW)
    assert window.to_json()["earliest"] is None and window.to_json()["latest"] is None and window.gaps == []


@pytest.mark.parametrize(("seen", "believed"), [
    ((320, 3600.0), 3600.0),  # a worker saw etcd at the store's revision 60 min after it: current until then
    ((320, 7200.0), 5400.0),  # ... and after the watcher's note: the note itself
    ((321, 7200.0), 360.0),  # etcd was past the store: the store's own time
    ((320, 300.0), 360.0),  # seen before the store's latest delta: says nothing
    (None, 360.0),  # no fresh report: the store's own time
])
def test_the_watchers_note_is_believed_no_later_than_a_worker_saw_etcd_at_the_stores_revision(
        seen: tuple[int, float] | None, believed: float) -> None:
    """The API asks no etcd: a worker's report (revision, time) stands for etcd's revision (common.etcd_seen). An
    idle cluster stays current up to that report, never past a moment when etcd was not at the store's revision."""
    window = recovery_window(CATALOG, DELTAS, NOW)
    assert window.latest is not None and window.latest.revision == 320 and window.latest.time == T0 + timedelta(
        minutes=6)
    claimed = T0.timestamp() + 5400  # the watcher noted it was current 90 min after T0
    reported = None if seen is None else (seen[0], T0.timestamp() + seen[1])
    point = recovery_point(window, claimed, T0 + timedelta(hours=2), lambda: reported)
    assert point is not None and point.time == T0 + timedelta(seconds=believed)


def snapshot_holds(service: Service, backup: str) -> int:
    """The revision a restore from `backup` reaches first: its snapshot may hold up to revision_at_end."""
    metadata = service.store.read_metadata(backup)
    assert metadata is not None
    return max(metadata.revision, metadata.revision_at_end or 0)


def test_the_window_detail_and_metrics_against_a_real_watcher(
        make_service_on_backend: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis,
        tmp_path: Path) -> None:
    service = make_service_on_backend(delta_period="100ms")
    _, end = deltas_during_writes(service, etcd, redis_conn, f"/window-{tmp_path.name}/")
    # The watcher's Redis says `end` is stored; a bucket's listing may show a just-written object a moment later
    # (one run on SeaweedFS, under load, listed none of the deltas after the backup yet): give it 10 s.
    deadline = time.monotonic() + 10
    while (window := service.client.get("/api/v1/recovery-window").get_json())["latest"]["revision"] != end \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    names = service.store.list_deltas()
    (backup,) = service.store.list_backups()
    said = (window, names, service.store.read_metadata(backup), [thread.name for thread in threading.enumerate()])
    assert window["earliest"]["revision"] == snapshot_holds(service, backup) and window["latest"]["revision"] == end, \
        said
    assert window["gaps"] == [] and window["backups"][0]["deltas"] == len(names) >= 3
    assert 0 <= window["watcher"]["recovery_point_seconds"] < 10 and window["watcher"]["last_revision"] == end
    assert datetime.fromisoformat(window["latest"]["time"]) <= datetime.now(UTC)

    (detail,) = service.client.get("/api/v1/backup?detail=true").get_json()
    assert detail["filename"] == backup and detail["deltas"] == names and detail["reaches_revision"] == end
    assert service.client.get("/api/v1/backup").get_json() == [backup]  # the original's plain list, unchanged

    metrics = service.client.get("/metrics").get_data(as_text=True)
    assert f"etcd_backup_delta_last_revision {float(end)}" in metrics
    assert f"etcd_backup_deltas_stored {float(len(names))}" in metrics
    assert f"etcd_backup_recovery_window_latest_revision {float(end)}" in metrics
    assert "etcd_backup_recovery_window_gaps 0.0" in metrics and "etcd_backup_recovery_point_seconds " in metrics
    # There from 0 before the first gap: Prometheus sees no increase in a counter's first sample (the gap alert).
    assert "etcd_backup_delta_gaps_total 0.0" in metrics

    middle = names[len(names) // 2]
    assert service.store.delete_delta(middle)
    gaps = service.client.get("/api/v1/recovery-window").get_json()["gaps"]
    assert len(gaps) == 0  # a hole with no backup after it is no gap: the window ends before it
    window = service.client.get("/api/v1/recovery-window").get_json()
    assert window["latest"]["revision"] == int(middle.split("-")[1]) - 1
    assert "etcd_backup_recovery_window_latest_revision " + str(float(window["latest"]["revision"])) in \
        service.client.get("/metrics").get_data(as_text=True)


def test_a_gap_between_two_backups_and_what_redis_says_of_it(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    service = make_service(delta_period="100ms")
    _, first_end = deltas_during_writes(service, etcd, redis_conn, f"/gap-{tmp_path.name}/", seconds=0.5)
    etcd.client().put(f"/gap-{tmp_path.name}/unstored", "x")  # the watcher is off: stored nowhere
    time.sleep(1.01)  # a new second: a new backup name
    _, end = deltas_during_writes(service, etcd, redis_conn, f"/gap-{tmp_path.name}/", seconds=0.5)
    first, second = (snapshot_holds(service, name) for name in service.store.list_backups())
    window = service.client.get("/api/v1/recovery-window").get_json()
    (gap,) = window["gaps"]
    assert (gap["reason"], gap["from"], gap["to"]) == (NOT_STORED, first_end + 1, second - 1), \
        (window, service.store.list_deltas(),
         [service.store.read_metadata(name) for name in service.store.list_backups()],
         [thread.name for thread in threading.enumerate()])
    assert (window["earliest"]["revision"], window["latest"]["revision"]) == (first, end)
    redis_conn.lpush(GAPS_KEY, json.dumps({"from": gap["from"], "to": gap["to"], "time": time.time()}))
    assert service.client.get("/api/v1/recovery-window").get_json()["gaps"][0]["reason"] == COMPACTED


@pytest.mark.parametrize("bad", ["zzz", "-1", "nan"])
def test_a_bad_watcher_value_in_redis_costs_one_metric(make_service: Callable[..., Service], redis_conn: redis.Redis,
                                                      bad: str) -> None:
    service = make_service(worker=False)
    redis_conn.hset(STATS_KEY, mapping={"events": bad, "bytes": "2048", "current_at": str(time.time() - 5)})
    redis_conn.rpush(GAPS_KEY, "not json", json.dumps({"from": 1, "to": "x", "time": 0}), json.dumps([1]))
    metrics = service.client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.get_data(as_text=True)
    assert "etcd_backup_delta_events_total" not in text and "etcd_backup_delta_bytes_total 2048.0" in text
    # The store holds nothing to restore: Redis' current_at alone proves no recovery point (it is the store's).
    assert "etcd_backup_recovery_point_seconds" not in text, text
    window = service.client.get("/api/v1/recovery-window")
    assert window.status_code == 200 and window.get_json()["gaps"] == []
    redis_conn.delete(GAPS_KEY)
    redis_conn.set(GAPS_KEY, "a string, not a list")
    assert service.client.get("/api/v1/recovery-window").status_code == 200


def test_the_window_needs_the_token(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False, api_token="a-token-long-enough-to-be-secret")
    assert service.client.get("/api/v1/recovery-window").status_code == 401
    answer = service.client.get("/api/v1/recovery-window",
                                headers={"Authorization": "Bearer a-token-long-enough-to-be-secret"})
    assert answer.status_code == 200 and answer.get_json()["earliest"] is None
