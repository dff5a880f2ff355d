"""Scheduled backups: one backup per tick however many schedulers, joining a queued backup, skip-unchanged,
the cron read in UTC; the Procfile's scheduler processes and the all-in-one's."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from common.config import ConfigError, load_config, parse_config
from common.metrics import read_outcomes
from common.queue import BACKUP_JOB, enqueue_or_join, job_queue
from harness.deployment import Deployment, procfile, start
from harness.in_process import ConfigFactory, Service
from harness.processes import wait_until
from harness.report import Report
from harness.servers import EtcdServer, RedisServer
from scheduler.cron import Tick, run_tick, tick_key

TICK = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)


def test_two_schedulers_give_one_backup_per_tick(write_config: ConfigFactory, redis_conn: redis.Redis) -> None:
    config = load_config(write_config(schedule="0 */6 * * *"))
    first = run_tick(config, redis_conn, TICK, "scheduler-a")
    second = run_tick(config, redis_conn, TICK, "scheduler-b")
    assert first is not None and second is None
    assert job_queue(redis_conn).count == 1
    assert redis_conn.get(tick_key(TICK)) == b"scheduler-a"


def test_a_tick_joins_a_queued_backup(write_config: ConfigFactory, redis_conn: redis.Redis) -> None:
    config = load_config(write_config(schedule="0 */6 * * *"))
    queued = enqueue_or_join(job_queue(redis_conn))  # a POST's, not yet started
    job = run_tick(config, redis_conn, TICK, "scheduler-a")
    assert job is not None and job.id == queued.id and job_queue(redis_conn).count == 1


def test_skip_unchanged(make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis,
                        report: Report) -> None:
    service = make_service(schedule="0 */6 * * *", skip_unchanged=True)
    assert service.client.post("/api/v1/backup").status_code == 200
    assert run_tick(service.config, redis_conn, TICK, "a") is None  # nothing written since
    assert read_outcomes(redis_conn)["skipped"] == 1
    etcd.client().put("/schedule/changed", "yes")
    job = run_tick(service.config, redis_conn, datetime(2026, 11, 27, 12, 0, tzinfo=UTC), "a")
    assert job is not None
    # A POST always takes a backup, changed or not.
    time.sleep(1)
    assert service.client.post("/api/v1/backup").status_code == 200
    report("skip-unchanged: a scheduled tick with etcd at the newest backup's revision, then after a write",
           "the first tick was skipped (counted as skipped in /metrics), the second enqueued a backup; POSTs "
           "always back up")


def test_cron_is_read_in_utc_and_checked() -> None:
    config = parse_config({"etcd": {}, "schedule": "30 6 * * *"}, {})
    tick = Tick(config, "test", "30 6 * * *", run_tick, BACKUP_JOB)
    tick.latest_enqueue_time = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
    assert tick.get_next_enqueue_time() == datetime(2026, 11, 27, 6, 30, tzinfo=UTC)
    with pytest.raises(ConfigError, match="schedule: not a cron expression"):
        parse_config({"etcd": {}, "schedule": "every day"}, {})
    with pytest.raises(ConfigError, match="skip-unchanged: expected true or false"):
        parse_config({"etcd": {}, "skip-unchanged": "yes"}, {})


EVERY_2_SECONDS = "* * * * * */2"  # croniter's sixth field: seconds


@pytest.mark.slow
def test_procfile_schedulers_and_a_worker(tmp_path: Path, etcd: EtcdServer, redis_server: RedisServer,
                                          redis_conn: redis.Redis, report: Report) -> None:
    deployment = Deployment(tmp_path, [etcd.url], redis_server, schedule=EVERY_2_SECONDS, rotate=50).start()
    schedulers = [deployment.start_process(procfile()["scheduler"], f"scheduler{i}") for i in range(2)]
    try:
        wait_until(lambda: len(deployment.backups()) >= 3, 30, "three scheduled backups")
    finally:
        for process in schedulers:
            process.terminate()
        for process in schedulers:
            assert process.wait(30) == 0
        deployment.stop()
    ticks = [key for key in redis_conn.scan_iter("etcd-backup:schedule-tick:*")]
    claimed_by = {redis_conn.get(key) for key in ticks}
    backups = deployment.backups()
    # Two schedulers, each tick claimed once: one backup per tick (a tick may still be running at the stop).
    assert len(backups) in (len(ticks), len(ticks) - 1), (backups, ticks)
    report("two scheduler processes (Procfile) and a worker, a schedule every 2 seconds",
           f"{len(ticks)} ticks, {len(backups)} backups: one per tick; ticks claimed by "
           f"{len(claimed_by)} scheduler(s); both exited 0 on SIGTERM")


@pytest.mark.slow
def test_all_in_one_runs_the_schedule(tmp_path: Path, etcd: EtcdServer) -> None:
    deployment = Deployment(tmp_path, [etcd.url], schedule=EVERY_2_SECONDS, rotate=50).start()
    try:
        wait_until(lambda: len(deployment.backups()) >= 2, 30, "two scheduled backups")
        status, _, body = deployment.request("GET", "/api/v1/backup")
        assert status == 200 and len(json.loads(body)) >= 2
    finally:
        deployment.stop()


@pytest.mark.slow
def test_a_scheduler_without_schedule_idles_until_stopped(write_config: ConfigFactory,
                                                          redis_server: RedisServer, tmp_path: Path) -> None:
    """The Procfile has a scheduler line for everyone: without `schedule` it must not end (foreman would
    stop the web and workers with it), and it must stop cleanly."""
    config = write_config(redis_url=redis_server.url)
    process = start(procfile()["scheduler"], config, tmp_path / "scheduler.log")
    try:
        wait_until(lambda: "idle until stopped" in (tmp_path / "scheduler.log").read_text(), 30, "the idle scheduler",
                   process)
        time.sleep(0.5)
        assert process.poll() is None
    finally:
        process.terminate()
    assert process.wait(10) == 0
