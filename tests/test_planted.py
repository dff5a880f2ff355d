"""Files planted in backup-dir: an open directory is refused at start-up, and whatever is named like a
backup, its metadata or a temp file without being a regular file of ours is skipped and logged, on
every path that reads backup-dir, without blocking or filling memory."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from common import backups, retention
from common.startup import start_up
from common.storage import LocalStore
from common.storage.local import temp_name
from harness.in_process import ConfigFactory, Service
from harness.report import Report
from worker.drill import run_drill

DEADLINE = 5.0
"""Seconds any one call may take with the plants in place (each takes well under one)."""


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o722])
def test_a_backup_dir_others_can_write_is_refused(write_config: ConfigFactory, backup_dir: Path, mode: int,
                                                  capsys: pytest.CaptureFixture[str], report: Report) -> None:
    backup_dir.mkdir()
    backup_dir.chmod(mode)
    path = write_config()
    with pytest.raises(SystemExit) as exited:
        start_up(str(path))
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.count("\n") == 1 and err.startswith(f"etcd-backup: bad config {path}: backup-dir: "), err
    assert f"mode {mode & 0o777:04o}" in err
    report(f"backup-dir exists with mode {mode:04o}", f"refused at start-up, exit 2: {err.strip()!r}")


def test_a_backup_dir_of_another_user_is_refused(write_config: ConfigFactory, backup_dir: Path,
                                                 capsys: pytest.CaptureFixture[str], report: Report) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory away")
    backup_dir.mkdir(mode=0o700)
    os.chown(backup_dir, 65534, 65534)
    path = write_config()
    with pytest.raises(SystemExit) as exited:
        start_up(str(path))
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith(f"etcd-backup: bad config {path}: backup-dir: "), err
    assert "owned by uid 65534" in err
    report("backup-dir mode 0700 but owned by another user (nobody)", f"refused at start-up, exit 2: {err.strip()!r}")


def plant_fifo(path: Path) -> None:
    os.mkfifo(path)


def plant_dev_zero(path: Path) -> None:
    os.symlink("/dev/zero", path)


def plant_directory(path: Path) -> None:
    path.mkdir()


def plant_big(path: Path) -> None:
    path.write_bytes(b" " * (10 << 20) + b"{}")  # 10 MB of valid JSON


PLANTS: dict[str, Callable[[Path], None]] = {
    "fifo": plant_fifo, "dev-zero-symlink": plant_dev_zero, "directory": plant_directory, "10MB": plant_big}
# What the plant is named like: the real backup's metadata, a backup (older than the real one), the
# metadata of a backup that is not there (an orphan, removed before each backup), a temp file.
TARGETS: dict[str, Callable[[str], str]] = {
    "metadata": lambda real: backups.metadata_name(real),
    "backup": lambda real: "snapshot-20200101_000000.tar.gz",
    "orphan-metadata": lambda real: "snapshot-20200101_000001.tar.gz.json",
    "temp": lambda real: temp_name("snapshot-20200101_000002.tar.gz", "deadbeef"),
}
CASES = [(plant, target) for target in TARGETS for plant in PLANTS
         # A 10 MB file named like a backup or a temp file is a regular file: a (bad) backup, an old temp file.
         if not (plant == "10MB" and target in ("backup", "temp"))
         # An orphan metadata file goes before each backup (unlink opens nothing); a directory cannot.
         and (target != "orphan-metadata" or plant == "directory")]


class Call(threading.Thread):
    """Run `action` on a thread: a call that blocks fails the test instead of hanging it."""

    def __init__(self, action: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.action = action
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.action()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc


def within_deadline(what: str, action: Callable[[], Any], seconds: float = DEADLINE) -> tuple[Any, float]:
    began = time.monotonic()
    call = Call(action)
    call.join(seconds)
    took = time.monotonic() - began
    assert not call.is_alive(), f"{what}: still blocked after {seconds} s"
    if call.error is not None:
        raise AssertionError(f"{what}: raised {call.error!r}") from call.error
    return call.result, took


@pytest.mark.parametrize(("plant", "target"), CASES)
def test_a_planted_file_is_skipped_and_logged_everywhere(
    make_service: Callable[..., Service], redis_conn: redis.Redis, caplog: pytest.LogCaptureFixture,
    plant: str, target: str, report: Report,
) -> None:
    service = make_service(rotate=1)
    client = service.client
    real = client.post("/api/v1/backup").get_json()["filename"]
    backup_dir = service.config.backup_dir
    planted = backup_dir / TARGETS[target](real)
    planted.unlink(missing_ok=True)
    PLANTS[plant](planted)
    caplog.set_level(logging.WARNING)

    took = {}
    listed, took["list"] = within_deadline("GET list", lambda: client.get("/api/v1/backup"))
    assert listed.status_code == 200 and listed.get_json() == [real]
    detail, took["detail"] = within_deadline("GET ?detail=true", lambda: client.get("/api/v1/backup?detail=true"))
    assert detail.status_code == 200 and [entry["filename"] for entry in detail.get_json()] == [real]
    download, took["download"] = within_deadline("GET backup", lambda: client.get(f"/api/v1/backup/{real}"))
    assert download.status_code == 200 and download.data == (backup_dir / real).read_bytes()
    download.close()
    if target == "backup":
        fake, _ = within_deadline("GET planted", lambda: client.get(f"/api/v1/backup/{planted.name}"))
        assert fake.status_code == 404
    metrics, took["metrics"] = within_deadline("GET /metrics", lambda: client.get("/metrics"))
    assert metrics.status_code == 200 and b"etcd_backup_backups_on_disk 1.0" in metrics.data
    verify, took["verify"] = within_deadline("POST verify", lambda: client.post(f"/api/v1/backup/{real}/verify"))
    assert verify.status_code == 200, verify.get_json()
    # A new backup: temp-file cleanup, orphan-metadata cleanup, the metadata writer, rotation (rotate 1).
    posted, took["POST"] = within_deadline("POST backup", lambda: client.post("/api/v1/backup"), seconds=30)
    assert posted.status_code == 200, posted.get_json()
    newest = posted.get_json()["filename"]
    pruned, took["prune"] = within_deadline("prune", lambda: retention.prune(
        LocalStore(backup_dir), datetime.now(UTC), rotate=1, retention=None))
    assert [d.name for d in pruned if d.keep] == [newest]
    assert LocalStore(backup_dir).list_backups() == [newest]

    logged = [record.getMessage() for record in caplog.records if str(planted) in record.getMessage()]
    assert logged and all("skipped" in line for line in logged), caplog.text
    slowest = max(took, key=lambda key: took[key])
    report(f"a {plant} named like a {target} ({planted.name}) planted in backup-dir",
           f"skipped and logged ({logged[0].split(': ', 2)[-1]!r}); list, detail, download, metrics, verify, "
           f"POST (temp and orphan cleanup, metadata writer, rotation) and prune all answered, the slowest "
           f"({slowest}) in {took[slowest]:.2f} s")


@pytest.mark.slow
@pytest.mark.parametrize("plant", list(PLANTS))
def test_the_drill_skips_planted_metadata(service: Service, redis_conn: redis.Redis, plant: str,
                                          caplog: pytest.LogCaptureFixture, report: Report) -> None:
    """The drill reads the newest backup's metadata, then restores it into a real etcd (a process)."""
    real = service.client.post("/api/v1/backup").get_json()["filename"]
    planted = service.config.backup_dir / backups.metadata_name(real)
    planted.unlink()
    PLANTS[plant](planted)
    caplog.set_level(logging.WARNING)
    drill, took = within_deadline("drill", lambda: run_drill(service.config, redis_conn), seconds=60)
    assert drill.backup == real and drill.passed, drill
    assert any(str(planted) in record.getMessage() and "skipped" in record.getMessage() for record in caplog.records)
    report(f"a {plant} in place of the newest backup's metadata, then the restore drill",
           f"the metadata skipped and logged; the drill restored {real} and passed in {took:.1f} s")
