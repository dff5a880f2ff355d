"""Whoever can write Redis can neither stop point-in-time recovery nor hide it: a lease key planted without a TTL
is taken over, and the recovery point comes from the store, Redis' `current_at` believed only where it is
credible (real Redis, etcd and watcher)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from common.deltas import parse_delta_name
from common.etcd_seen import REPORT_PERIOD, SEEN_KEY, newest
from common.recovery_window import STATS_KEY
from harness.in_process import Service
from harness.processes import wait_until
from harness.servers import EtcdServer
from harness.writer import current_revision
from tests.test_deltas import deltas_during_writes, watcher
from worker.deltas import LEASE_KEY, LEASE_TTL

HOSTILE_CURRENT_AT: list[str | bytes | float] = [4102444800, 1e12, "nan", "inf", "-1", b"\xff", "9" * 400]


def stored_end(service: Service) -> int:
    return max((said.last for name in service.store.list_deltas() if (said := parse_delta_name(name))), default=0)


def scraped_recovery_point(service: Service) -> tuple[float, float]:
    """/metrics' recovery point and the time it is measured from (Unix)."""
    answer = service.client.get("/metrics")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    text = answer.get_data(as_text=True)
    seconds = re.search(r"^etcd_backup_recovery_point_seconds (\S+)$", text, re.MULTILINE)
    current = re.search(r"^etcd_backup_delta_current_timestamp_seconds (\S+)$", text, re.MULTILINE)
    assert seconds is not None and current is not None, text
    return float(seconds[1]), float(current[1])


def wait_for_etcd_report_after(moment: float, connection: redis.Redis) -> None:
    """Until a worker has reported etcd's revision as seen after `moment` (common.etcd_seen): the API's only view
    of etcd, so what it believes of current_at rests on it."""
    wait_until(lambda: (seen := newest(connection, SEEN_KEY, time.time())) is not None and seen.at > moment,
               REPORT_PERIOD + 10, "a report of etcd newer than the test's step")


def windows_recovery_point(service: Service) -> tuple[dict[str, object], float, float]:
    """The recovery window, its watcher's recovery point and current_at (Unix)."""
    answer = service.client.get("/api/v1/recovery-window")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    window = answer.get_json()
    seconds, current_at = window["watcher"]["recovery_point_seconds"], window["watcher"]["current_at"]
    assert isinstance(seconds, float | int) and isinstance(current_at, str), window
    return window, float(seconds), datetime.fromisoformat(current_at).timestamp()


def test_a_lease_without_a_ttl_and_a_current_at_in_the_future_neither_stop_nor_hide_the_deltas(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """`SET etcd-backup:delta-watcher x` and `HSET etcd-backup:deltas current_at 4102444800` while the watcher
    runs: the old watcher stopped for good (a key without a TTL is never released) and the recovery point read 0."""
    service = make_service(delta_period="100ms")
    prefix = f"/lease-{tmp_path.name}/"
    deltas_during_writes(service, etcd, redis_conn, prefix, seconds=0.3)
    client = etcd.client()
    caplog.set_level(logging.WARNING, logger="worker.deltas")
    with watcher(service.config, redis_conn):
        time.sleep(0.5)
        redis_conn.set(LEASE_KEY, "x")
        redis_conn.hset(STATS_KEY, "current_at", 4102444800)
        for n in range(200):
            client.put(f"{prefix}after/{n}", "v")
        end = current_revision(etcd.url)
        deadline = time.monotonic() + LEASE_TTL + 10
        while stored_end(service) < end:
            assert time.monotonic() < deadline, f"no delta past revision {stored_end(service)} of {end}"
            time.sleep(0.2)
        took_over = [record.getMessage() for record in caplog.records if LEASE_KEY in record.getMessage()]
        assert len(took_over) == 1 and "no TTL" in took_over[0], took_over
        assert 0 < redis_conn.pttl(LEASE_KEY) <= LEASE_TTL * 1000
    now = time.time()
    _, seconds, current_at = windows_recovery_point(service)
    assert current_at <= now and seconds >= 0
    scraped, scraped_current = scraped_recovery_point(service)
    assert scraped_current <= now and scraped >= 0


@pytest.mark.parametrize("hostile", [*HOSTILE_CURRENT_AT, "now"], ids=lambda value: repr(value)[:12])
def test_a_hostile_current_at_never_500s_nor_makes_the_recovery_point_better_than_the_store(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        hostile: str | bytes | float) -> None:
    """The watcher stopped, etcd written since: whatever current_at says (`now` too, written by hand), the recovery
    point is measured from the store's latest revision's time, never later."""
    service = make_service(delta_period="100ms")
    prefix = f"/current-{tmp_path.name}/"
    _, end = deltas_during_writes(service, etcd, redis_conn, prefix, seconds=0.3)
    etcd.client().put(f"{prefix}unstored", "x")  # the watcher is stopped: stored nowhere
    put_at = time.time()
    time.sleep(2)
    wait_for_etcd_report_after(put_at, redis_conn)  # a worker saw etcd past the store's revision
    redis_conn.hset(STATS_KEY, "current_at", time.time() if hostile == "now" else hostile)
    window, seconds, current_at = windows_recovery_point(service)
    latest = window["latest"]
    assert isinstance(latest, dict) and latest["revision"] == end, window
    store_time = datetime.fromisoformat(latest["time"]).timestamp()
    now = time.time()
    assert current_at <= store_time + 1, (window, hostile)
    assert seconds >= now - store_time - 1 - 1, (window, hostile)  # one second of the name's rounding, one of test
    scraped, scraped_current = scraped_recovery_point(service)
    assert scraped_current <= store_time + 1 and scraped >= time.time() - store_time - 2, (scraped, scraped_current)


def test_an_idle_cluster_stays_current_when_etcd_holds_nothing_the_store_does_not(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """What current_at is for: no write since the last delta, the watcher's note that it is current is believed
    (etcd's revision is the store's latest, as a worker saw it after the note), so an idle cluster's recovery point
    does not age."""
    service = make_service(delta_period="100ms")
    _, end = deltas_during_writes(service, etcd, redis_conn, f"/idle-{tmp_path.name}/", seconds=0.3)
    time.sleep(2.5)
    assert current_revision(etcd.url) == end
    noted = time.time() - 0.2
    redis_conn.hset(STATS_KEY, "current_at", noted)
    wait_for_etcd_report_after(noted, redis_conn)
    _, seconds, current_at = windows_recovery_point(service)
    assert abs(current_at - noted) < 0.01 and seconds < REPORT_PERIOD + 1.5
    scraped, scraped_current = scraped_recovery_point(service)
    assert abs(scraped_current - noted) < 0.01 and scraped < REPORT_PERIOD + 1.5
    assert datetime.fromtimestamp(current_at, UTC) <= datetime.now(UTC)
