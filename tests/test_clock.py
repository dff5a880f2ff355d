"""A host whose clock is wrong: backups are named from Redis' clock, and backups named in the future
(left by a host whose clock was ahead) are never taken for the newest, by anything that picks one."""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fakeredis
import pytest
import redis

import worker.deltas
from common import backups, retention
from common.clock import redis_clock
from common.config import RetentionConfig
from common.deltas import parse_delta_name
from common.metadata import BackupMetadata
from common.storage import LocalStore
from harness.in_process import Service
from harness.report import Report
from harness.servers import EtcdServer
from harness.writer import current_revision
from recovery.client import Client
from tests.test_deltas import wait_stored, watcher
from tests.test_metrics import scrape
from worker.deltas import STATS_KEY
from worker.drill import run_drill

PROJECT_PACKAGES = ("api", "cli", "common", "recovery", "scheduler", "worker")


def skew_host_clock(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> None:
    """Make this process' clock (datetime.now, wherever the project reads it) `offset` off; Redis' is not."""

    class Skewed(datetime):
        @classmethod
        def now(cls, tz: object = None) -> Skewed:  # type: ignore[override]
            real = datetime.now(UTC) + offset
            return cls.fromtimestamp(real.timestamp(), UTC)

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in PROJECT_PACKAGES and getattr(module, "datetime", None) is datetime:
            monkeypatch.setattr(module, "datetime", Skewed)


def redis_now(connection: redis.Redis) -> datetime:
    seconds, microseconds = connection.time()
    return datetime.fromtimestamp(seconds + microseconds / 1e6, UTC)


def plant(backup_dir: Path, at: datetime, revision: int | None) -> str:
    """Put a backup named for `at` in backup-dir, as a worker whose clock said `at` would have left it
    (with its metadata, unless `revision` is None)."""
    name = backups.backup_name(at)
    (backup_dir / name).write_bytes(b"an archive from a host whose clock was ahead")
    if revision is not None:
        LocalStore(backup_dir).update_metadata(BackupMetadata(
            filename=name, filesize=44, cluster_id="1", member_id="2", endpoint="http://ahead:2379",
            revision=revision, etcd_version="3.4.23", db_size=20480, db_sha256="0" * 64,
            started=at.replace(microsecond=0).isoformat(), duration=0.1))
    return name


@pytest.mark.parametrize("offset", [timedelta(hours=1), timedelta(hours=-1)], ids=["ahead", "behind"])
def test_backups_are_named_by_redis_clock_not_the_hosts(service: Service, redis_conn: redis.Redis,
                                                        monkeypatch: pytest.MonkeyPatch, offset: timedelta,
                                                        report: Report) -> None:
    skew_host_clock(monkeypatch, offset)
    names = []
    for _ in range(3):
        response = service.client.post("/api/v1/backup")
        assert response.status_code == 200, response.get_json()
        names.append(response.get_json()["filename"])
    named = [backups.backup_time(name) for name in names]
    errors = [abs((at - redis_now(redis_conn)).total_seconds()) for at in named if at is not None]
    assert len(errors) == 3 and max(errors) < 10, (names, errors)
    assert len(set(names)) == 3 and service.client.get("/api/v1/backup").get_json() == names
    report(f"a worker whose host clock is {offset.total_seconds() / 3600:+.0f} h off takes 3 backups "
           "(the clock skewed in-process; Redis' is right)",
           f"all 3 named from Redis' clock (at most {max(errors):.1f} s from Redis TIME), unique, listed in order")


def test_future_named_backups_are_never_the_newest(make_service: Callable[..., Service], redis_conn: redis.Redis,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture, report: Report) -> None:
    """What a worker 1 h ahead (and others further) left behind, as the issue reproduced it: 3 of them,
    rotate 4. Today's names come from Redis' clock; these must not mislead anything."""
    service = make_service(rotate=4)
    backup_dir = service.config.backup_dir
    now = redis_now(redis_conn)
    # Minutes at random: report_once logs a name once per process, and other tests plant too.
    jitter = timedelta(minutes=random.randrange(1, 1000))
    future = [
        plant(backup_dir, now + timedelta(hours=1) + jitter, revision=999_999),  # with metadata
        plant(backup_dir, now + timedelta(days=3650) + jitter, revision=None),  # far, without metadata
        plant(backup_dir, now + timedelta(seconds=90), revision=888_888),  # just beyond the tolerance
    ]
    caplog.set_level(logging.WARNING, logger="common.backups")
    taken = []
    for _ in range(6):
        response = service.client.post("/api/v1/backup")
        assert response.status_code == 200, response.get_json()
        taken.append(response.get_json()["filename"])
        listed = service.client.get("/api/v1/backup").get_json()
        assert listed[-1] == taken[-1], listed  # the client's "latest"
    assert len(set(taken)) == 6
    # Rotation kept the 4 newest real backups; the future-named ones counted as the oldest.
    assert LocalStore(backup_dir).list_backups() == sorted(taken[-4:])
    assert all(f"{name} is named more than 60 s after the clock" in caplog.text for name in future)

    # Planted again (as a skewed worker still running would): the metrics, the drill and `download
    # latest` pick the real newest all the same, and the metrics count them.
    future = [plant(backup_dir, now + timedelta(hours=1) + jitter, revision=999_999),
              plant(backup_dir, now + timedelta(days=3650) + jitter, revision=None)]
    samples = scrape(service)
    real = LocalStore(backup_dir).read_metadata(taken[-1])
    assert real is not None
    assert samples["etcd_backup_last_revision"] == real.revision
    assert samples["etcd_backup_future_backups"] == 2
    gauge_lag = time.time() - samples["etcd_backup_last_success_timestamp_seconds"]
    assert 0 <= gauge_lag < 60, gauge_lag
    client = Client("http://unused")
    monkeypatch.setattr(client, "list", lambda: service.client.get("/api/v1/backup").get_json())
    assert client.resolve("latest") == taken[-1]
    drilled = run_drill(service.config, redis_conn)
    assert drilled.backup == taken[-1]
    report("3 backups named in the future left in backup-dir (+1 h with metadata, +10 years without, +90 s), "
           "then 6 POSTs with rotate 4; the same planted again, then /metrics, `download latest`, the drill",
           f"6 of 6 POSTs 200 with unique names, each the list's last; rotation kept the 4 real ones and deleted "
           f"the future ones as the oldest; each logged; metrics: newest = the real one, success gauge "
           f"{gauge_lag:.1f} s old, etcd_backup_future_backups {samples['etcd_backup_future_backups']:.0f}; "
           f"download latest and the drill ({'passed' if drilled.passed else 'failed'}) took the real newest")


def test_a_backup_slightly_ahead_is_followed_not_overtaken(service: Service, redis_conn: redis.Redis,
                                                          report: Report) -> None:
    """Within the tolerance (a clock that stepped back 30 s), a backup still counts as the newest: the
    next one is named after it, so that it is newer by name too, and rotation keeps it."""
    ahead = plant(service.config.backup_dir, redis_now(redis_conn) + timedelta(seconds=30), revision=777)
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 200, response.get_json()
    name = response.get_json()["filename"]
    assert name > ahead and service.client.get("/api/v1/backup").get_json() == [ahead, name]
    report("a backup named 30 s ahead (within the 60 s tolerance) in backup-dir, then a POST",
           f"200: named {name}, a second after it, so the list's last is the new backup")


def test_retention_counts_future_names_as_the_oldest_with_no_age() -> None:
    now = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    real = [backups.backup_name(now - timedelta(hours=hours)) for hours in (0, 2, 30)]
    future = [backups.backup_name(now + delta) for delta in (timedelta(hours=1), timedelta(days=3650))]
    policy = RetentionConfig(hourly=24, daily=7)
    decisions = {d.name: d for d in retention.plan(real + future, now, rotate=10, retention=policy, protect=real[0])}
    assert decisions[real[0]].reason == "the newest backup"
    assert all(decisions[name].keep for name in real)
    assert not any(decisions[name].keep for name in future)
    # With rotate alone they are the first to go: the new backup outlives them.
    capped = retention.plan(real + future, now, rotate=3, retention=None, protect=real[0])
    assert [d.name for d in capped if d.keep] == real


def test_embedded_clock_is_the_local_one() -> None:
    """fakeredis answers TIME from time.time(): the embedded mode names backups by its host's clock."""
    clock = redis_clock(fakeredis.FakeRedis(server=fakeredis.FakeServer()))
    assert abs((clock() - datetime.now(UTC)).total_seconds()) < 1
    assert abs((redis_clock(redis.Redis.from_url("redis://127.0.0.1:1"))() - datetime.now(UTC)).total_seconds()) < 1


class _SkewedTime:
    """The `time` module as a host whose clock is `offset` off sees it: time() skewed, monotonic() as it is."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset.total_seconds()

    def time(self) -> float:
        return time.time() + self.offset

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


@pytest.mark.parametrize("offset", [timedelta(hours=1), timedelta(hours=-1)], ids=["ahead", "behind"])
def test_the_delta_watcher_times_deltas_by_redis_clock_not_the_hosts(
        make_service: Callable[..., Service], redis_conn: redis.Redis, etcd: EtcdServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, offset: timedelta, report: Report) -> None:
    """The times in delta names choose what `restore --to-time` applies, against backups named by Redis' clock: a
    watcher an hour behind would have put the incident's revisions before a time that preceded it."""
    service = make_service(delta_period="200ms")
    service.client.post("/api/v1/backup")
    skew_host_clock(monkeypatch, offset)
    monkeypatch.setattr(worker.deltas, "time", _SkewedTime(offset))
    client = etcd.client()
    with watcher(service.config, redis_conn):
        for number in range(5):
            client.put(f"/clock-{tmp_path.name}/{number}", "x")
        wait_stored(redis_conn, current_revision(etcd.url))
        time.sleep(0.5)  # a period with nothing new: the watcher notes it is current
        current_at = float(redis_conn.hget(STATS_KEY, "current_at") or 0)
    now = redis_now(redis_conn)
    names = [said for name in service.store.list_deltas() if (said := parse_delta_name(name)) is not None]
    assert names
    errors = [abs((moment - now).total_seconds()) for said in names for moment in (said.first_seen, said.last_seen)]
    assert max(errors) < 30, (offset, [str(said) for said in names])
    assert abs(current_at - now.timestamp()) < 30, (current_at, now)
    report(f"a delta watcher whose host clock is {offset} off (Redis' is not)",
           f"its {len(names)} deltas are named within {max(errors):.0f} s of Redis' clock, and its current_at "
           f"within {abs(current_at - now.timestamp()):.0f} s")
