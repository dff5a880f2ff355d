"""Quiet success, clear times (issue 27): a drill or a restore that succeeds says so, and nothing on stderr and no
WARNING (a throwaway etcd probed before it listened printed `etcd endpoint unix:///tmp/...: unreachable` after
every successful drill and most point-in-time restores: at 3 a.m. that reads as a failure). A time without a zone is
refused in one line that shows the forms taken; a time past the newest data says how far the data reaches."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from common.queue import enqueue_drill, job_queue
from harness.cli import etcd_backup
from harness.deployment import procfile, start
from harness.in_process import Service
from harness.keys import signing
from harness.processes import stop_process, wait_until
from harness.report import Report
from harness.servers import EtcdServer
from harness.writer import keys_at
from recovery.throwaway import START_TIMEOUT, EtcdBinary, ThrowawayFailed, throwaway_etcd
from tests.test_deltas import restored
from tests.test_restore_latest import ONE_AS_MANY, deltas_after_a_backup, restore_host_config

pytestmark = pytest.mark.xdist_group("point-in-time")  # restores apply deltas in /dev/shm, as tests/test_deltas.py's
NOISE = (" WARNING ", " ERROR ", "Traceback", "unreachable")


def test_a_successful_drill_in_a_worker_process_logs_no_warning(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    """The scheduler's path: a drill job, run by `etcd-backup worker` (the Procfile's), of a backup with deltas after
    it (the drill restores it, then applies the deltas to a random revision and compares with etcd). Signed, so
    that the worker has nothing to warn of at its start either: every line of its log is the drill's or RQ's."""
    service = make_service(delta_period="200ms", signing=signing(tmp_path))
    backup, _ = deltas_after_a_backup(service, etcd, redis_conn, f"/quiet-drill-{tmp_path.name}/")
    service.stop_worker()
    log = tmp_path / "worker.log"
    worker = start(procfile()["worker"], tmp_path / "config.yml", log)
    try:
        job = enqueue_drill(job_queue(redis_conn))
        wait_until(lambda: job.get_status(refresh=True) in ("finished", "failed"), 180, "the drill job", worker)
    finally:
        stop_process(worker, timeout=30)
    metadata = service.store.read_metadata(backup)
    assert metadata is not None and metadata.drill is not None
    assert metadata.drill["outcome"] == "passed" and "point in time: revision" in metadata.drill["reason"], \
        metadata.drill
    lines = log.read_text().splitlines()
    assert any(f"restore drill of {backup} passed" in line for line in lines), lines
    noisy = [line for line in lines if any(word in line for word in NOISE)]
    assert not noisy, noisy
    report("a successful drill (with a point-in-time check) in `etcd-backup worker`",
           f"passed, {len(lines)} log lines, none WARNING or ERROR, none 'unreachable'")


def test_a_restore_past_the_newest_data_is_quiet_and_says_how_far_the_data_reaches(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    service = make_service(delta_period="200ms")
    prefix = f"/quiet-pitr-{tmp_path.name}/"
    _, end = deltas_after_a_backup(service, etcd, redis_conn, prefix)
    service.stop_worker()
    config = restore_host_config(tmp_path / "restore-host.yml", service)
    expected = keys_at(etcd.url, prefix, revision=end)
    later = datetime.now(UTC) + timedelta(hours=1)
    for given in (later.isoformat(), str(int(later.timestamp()))):  # ISO 8601 with its zone, and Unix seconds
        data_dir = tmp_path / f"restored-{given[:10]}"
        done = etcd_backup("restore", "--config", str(config), "--to-time", given, "--data-dir", str(data_dir),
                           timeout=180)
        assert done.returncode == 0 and done.stderr == "", done
        assert "WARNING" not in done.stdout and not ONE_AS_MANY.search(done.stdout), done.stdout
        said = [line for line in done.stdout.splitlines() if "past the newest data" in line]
        assert len(said) == 1 and f"the deltas reach revision {end} (" in said[0] \
            and said[0].endswith("); restored to it"), done.stdout
        assert restored(data_dir, prefix) == expected and len(expected) == 12
    report("`restore --to-time` an hour past the newest delta (ISO 8601, then Unix seconds), with the service down",
           f"exit 0, stderr empty, no WARNING; \"{said[0]}\"; the restored keys equal etcd's at revision {end}")


@pytest.mark.parametrize("given", ["2026-12-07T00:21:57", "2026-12-07 00:21:57", "yesterday", "2026-13-01T00:00:00Z"])
def test_a_time_without_a_zone_or_no_time_is_refused_in_one_line(given: str, tmp_path: Path) -> None:
    """Refused before the config is read or anything is restored: one line, exit status 2, the forms taken."""
    done = etcd_backup("restore", "--config", str(tmp_path / "absent.yml"), "--to-time", given,
                       "--data-dir", str(tmp_path / "restored"))
    assert done.returncode == 2 and done.stdout == "", done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"etcd-backup restore: --to-time '{given}'"), lines
    assert "Z" in lines[0] and "+01:00" in lines[0] and "Unix seconds" in lines[0], lines
    if given.startswith("2026-12-07"):
        assert "has no zone" in lines[0] and "2026-12-07T00:21:57Z" in lines[0] and "1796602917" in lines[0], lines
    assert not (tmp_path / "restored").exists()


FAKE_ETCD = """#!/usr/bin/env python3
# An etcd that dies once it listens (a database it panics on): its client socket is made, and stays behind.
import socket, sys, time
url = sys.argv[sys.argv.index("--listen-client-urls") + 1]
listener = socket.socket(socket.AF_UNIX)
listener.bind(url.removeprefix("unix://"))
listener.listen()
time.sleep(0.5)
sys.exit(7)
"""


def test_a_throwaway_etcd_that_dies_once_it_listens_is_said_at_once(tmp_path: Path) -> None:
    """The throwaway etcd (drill, point-in-time restore, standby) is waited for by its health, and between two
    looks by whether it still runs: one that dies after making its socket is said within seconds. (A gRPC connect
    that waited for it to serve waited out the whole start timeout, a minute: the standby's adversary test, whose
    throwaway etcd is killed as it starts, took 74 s instead of 14.)"""
    fake = tmp_path / "etcd"
    fake.write_text(FAKE_ETCD)
    fake.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    began = time.monotonic()
    with pytest.raises(ThrowawayFailed, match="exited with status 7"), \
            throwaway_etcd(work, work / "data", None, None, EtcdBinary(str(fake), "3.4.23")):
        pass
    assert time.monotonic() - began < START_TIMEOUT / 6
