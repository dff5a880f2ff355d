"""Backup names, and the local store's temp-file and orphan cleanup (pure units on a temp dir)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from common import backups
from common.storage.local import LocalStore, temp_name


def touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_bytes(name.encode())


def test_names_round_trip() -> None:
    started = datetime(2018, 12, 20, 2, 41, 5, 999, tzinfo=UTC)
    name = backups.backup_name(started)
    assert name == "snapshot-20181220_024105.tar.gz"
    assert backups.member_name(name) == "snapshot-20181220_024105.db"
    assert backups.backup_time(name) == started.replace(microsecond=0)


@pytest.mark.parametrize("name", [
    "snapshot-20181220_024105.tar.gz.part", ".snapshot-20181220_024105.tar.gz", "snapshot-20181232_024105.tar.gz",
    "snapshot-20181220_246105.tar.gz", "xsnapshot-20181220_024105.tar.gz", "snapshot-20181220_024105.tar.gz\n",
])
def test_not_backup_names(name: str) -> None:
    assert not backups.is_backup_name(name)


def test_remove_temp_files_removes_only_temp_files_of_backups_that_lost_the_lock(tmp_path: Path) -> None:
    dead = temp_name("snapshot-20240101_000000.tar.gz", "1a2b")
    active = temp_name("snapshot-20240101_000001.tar.gz", "3c4d")
    store = LocalStore(tmp_path)
    touch(tmp_path, dead, active, "snapshot-20240101_000000.tar.gz", ".bashrc")
    assert store.remove_unpublished(lambda: "3c4d") == [dead]
    assert sorted(os.listdir(tmp_path)) == sorted([active, ".bashrc", "snapshot-20240101_000000.tar.gz"])
    assert store.remove_unpublished(lambda: None) == [active]
