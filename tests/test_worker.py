"""Worker behaviour beyond the happy path: crash leftovers, a full disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis

from common.config import load_config
from common.etcd import EtcdConnection
from common.queue import LOCK_KEY
from common.startup import prepare_backup_dir
from common.storage import LocalStore
from common.storage.local import temp_name
from harness.in_process import ConfigFactory, Service
from harness.report import Report
from worker import backup
from worker.errors import BackupError
from worker.leases import backup_lock, job_heartbeat
from worker.runner import prepare

LEFTOVER = ".snapshot-20240101_000000.tar.gz.0badc0de.part"
OLD_BACKUP = "snapshot-20240101_000000.tar.gz"


def test_worker_start_removes_leftover_temp_files(write_config: ConfigFactory, backup_dir: Path,
                                                  redis_conn: redis.Redis) -> None:
    config = load_config(write_config())
    prepare_backup_dir(config)
    (backup_dir / LEFTOVER).write_bytes(b"half a backup")
    (backup_dir / OLD_BACKUP).write_bytes(b"a good backup")
    prepare(config, redis_conn)
    assert sorted(os.listdir(backup_dir)) == [OLD_BACKUP]


def test_the_temp_file_of_the_lock_holder_is_kept(write_config: ConfigFactory, backup_dir: Path,
                                                 redis_conn: redis.Redis) -> None:
    config = load_config(write_config())
    prepare_backup_dir(config)
    with job_heartbeat(redis_conn, "job1"), backup_lock(redis_conn, token="job1") as acquired:
        assert acquired
        being_written = temp_name(OLD_BACKUP, "job1")
        (backup_dir / being_written).write_bytes(b"being written by another worker")
        (backup_dir / LEFTOVER).write_bytes(b"left by a worker that was killed")
        prepare(config, redis_conn)
        assert os.listdir(backup_dir) == [being_written]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, nearly full filesystem: a 1 MiB tmpfs."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_is_a_500_that_says_so_and_keeps_old_backups(
    make_service: Callable[..., Service], small_disk: Path, report: Report
) -> None:
    service = make_service(backup_dir=str(small_disk), rotate=1)
    old = small_disk / OLD_BACKUP
    old.write_bytes(b"an older good backup")
    fill_disk(small_disk)  # whatever is left is less than one archive needs
    response = service.client.post("/api/v1/backup")
    assert response.status_code == 500
    message = response.get_json()["message"]
    assert message.startswith("failed to save an etcd backup: ")
    assert "is full (No space left on device)" in message
    assert sorted(os.listdir(small_disk)) == ["filler", OLD_BACKUP]  # no temp file; rotation did not run
    assert old.read_bytes() == b"an older good backup"
    report("backup-dir on a full 1 MiB tmpfs (rotate 1, one older backup)",
           f"POST 500: \"{message}\"; temp file removed; the older backup still there, byte for byte")


def test_the_temp_file_of_a_lock_holder_without_heartbeat_is_removed(
    write_config: ConfigFactory, backup_dir: Path, redis_conn: redis.Redis
) -> None:
    """A worker killed mid-backup leaves the lock (until it expires) but its heartbeat stops."""
    config = load_config(write_config())
    prepare_backup_dir(config)
    redis_conn.set(LOCK_KEY, "killed-job", ex=30)
    (backup_dir / temp_name(OLD_BACKUP, "killed-job")).write_bytes(b"half a backup")
    prepare(config, redis_conn)
    assert os.listdir(backup_dir) == []


class _FrozenStream:
    """What a snapshot call on a frozen etcd gives: no message ever, until cancel()."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def __iter__(self) -> _FrozenStream:
        return self

    def __next__(self) -> object:
        self.cancelled.wait(30)
        raise grpc.RpcError("cancelled")

    def cancel(self) -> bool:
        self.cancelled.set()
        return True


def test_a_stream_frozen_before_its_first_message_stalls(write_config: ConfigFactory, backup_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch, report: Report) -> None:
    stream = _FrozenStream()
    monkeypatch.setattr(EtcdConnection, "snapshot", lambda self: stream)
    monkeypatch.setattr(backup, "STALL_SECONDS", 0.5)
    config = load_config(write_config())
    prepare_backup_dir(config)
    began = time.monotonic()
    with pytest.raises(BackupError, match=r"stalled: nothing received for 0.5s"):
        backup.take_backup(config, LocalStore(config.backup_dir), temp_tag="job")
    waited = time.monotonic() - began
    assert waited < 5 and stream.cancelled.is_set()
    assert os.listdir(backup_dir) == []
    report("a snapshot stream that never sends its first message (a fake stream, stall timeout 0.5 s)",
           f"the backup failed as stalled after {waited:.1f} s; the stream was cancelled; nothing written")


def fill_disk(directory: Path) -> Path:
    """Fill the file system of `directory` with one file (returned): every write there fails now."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler
