"""rotate (the original etcd-backup's keep-N) and the retention section, with a fixed clock; `etcd-backup prune`."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli.main import main
from common import backups, retention
from common.backups import backup_name
from common.config import ConfigError, RetentionConfig, load_config, parse_config
from common.deltas import DeltaName
from common.metadata import BackupMetadata
from common.storage import LocalStore, open_store
from harness.files import write_config
from harness.s3 import S3Server

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def names_at(*ages: timedelta) -> list[str]:
    return [backup_name(NOW - age) for age in ages]


def kept(decisions: list[retention.Decision]) -> list[str]:
    return [decision.name for decision in decisions if decision.keep]


def test_rotate_keeps_the_newest_by_name_time_and_nothing_else_is_touched(tmp_path: Path) -> None:
    names = [f"snapshot-2024010{day}_000000.tar.gz" for day in range(1, 6)]
    for name in [*names, "README", ".snapshot-20240101_000000.tar.gz.ab.part"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f"{names[0]}.json").write_text("{}")
    os.utime(tmp_path / names[0], (2e9, 2e9))  # mtimes say nothing: the newest file is the oldest backup
    decisions = retention.prune(LocalStore(tmp_path), NOW, rotate=2, retention=None, protect=names[-1])
    assert kept(decisions) == names[:2:-1]
    assert [d.reason for d in decisions if not d.keep] == ["beyond the newest 2 (rotate)"] * 3
    assert sorted(os.listdir(tmp_path)) == sorted([".snapshot-20240101_000000.tar.gz.ab.part", "README", *names[3:]])


def test_the_backup_just_taken_is_never_deleted() -> None:
    names = ["snapshot-20240101_000000.tar.gz", "snapshot-20240102_000000.tar.gz", "snapshot-20240103_000000.tar.gz"]
    # A clock that went backwards made the new backup the oldest one.
    assert kept(retention.plan(names, NOW, rotate=1, retention=None, protect=names[0])) == [names[2], names[0]]


def test_max_age_keeps_the_young_and_always_the_newest() -> None:
    names = names_at(timedelta(hours=1), timedelta(days=2), timedelta(days=40))
    policy = RetentionConfig(max_age=timedelta(days=30).total_seconds())
    decisions = retention.plan(names, NOW, rotate=100, retention=policy)
    assert kept(decisions) == names[:2]
    assert decisions[2].reason == "older than max-age 30d"
    only_old = names_at(timedelta(days=40), timedelta(days=50))
    assert kept(retention.plan(only_old, NOW, rotate=100, retention=policy)) == only_old[:1]


def test_tiered_policy() -> None:
    # A backup every 15 minutes for three weeks.
    names = names_at(*(timedelta(minutes=15 * step) for step in range(4 * 24 * 21)))
    policy = RetentionConfig(hourly=6, daily=3, weekly=2)
    decisions = {d.name: d for d in retention.plan(names, NOW, rotate=1000, retention=policy)}
    keep = sorted((name for name, d in decisions.items() if d.keep), reverse=True)
    last_hour = names_at(*(timedelta(minutes=m) for m in (0, 15, 30, 45)))
    assert keep[:4] == last_hour and decisions[last_hour[1]].reason == "from the last hour"
    # Then the newest of each clock hour younger than 6 hours: 10:45 ... 06:45 (11:45 is in the last hour).
    hourly = [backup_name(datetime(2026, 11, 27, hour, 45, tzinfo=UTC)) for hour in (10, 9, 8, 7, 6)]
    assert all(decisions[name].keep for name in hourly)
    assert decisions[hourly[0]].reason == "the newest of its hour (2026-11-27 10:00)"
    assert decisions[backup_name(datetime(2026, 11, 27, 10, 30, tzinfo=UTC))].keep is False
    # The newest of each day younger than 3 days (23:45 of the 26th, 25th, 24th), of each ISO week younger than
    # 2 weeks (the Sundays 22nd and 15th: weeks 47 and 46; week 48 is today's).
    daily = [backup_name(datetime(2026, 11, day, 23, 45, tzinfo=UTC)) for day in (26, 25, 24)]
    assert [decisions[name].reason for name in daily] == [
        f"the newest of its day (2026-11-{day})" for day in (26, 25, 24)]
    assert decisions[backup_name(datetime(2026, 11, 26, 22, 0, tzinfo=UTC))].keep is False
    weekly = [backup_name(datetime(2026, 11, day, 23, 45, tzinfo=UTC)) for day in (22, 15)]
    assert [decisions[name].reason for name in weekly] == [
        "the newest of its week (2026-W47)", "the newest of its week (2026-W46)"]
    assert decisions[names[-1]].keep is False and "not kept by the tiers" in decisions[names[-1]].reason
    assert keep == last_hour + hourly + daily + weekly


def test_any_rule_keeps_and_rotate_caps_the_total() -> None:
    names = names_at(timedelta(minutes=5), timedelta(hours=3), timedelta(days=2), timedelta(days=9))
    policy = RetentionConfig(max_age=timedelta(days=3).total_seconds(), weekly=2)
    assert kept(retention.plan(names, NOW, rotate=100, retention=policy)) == names  # the 9-day-old: weekly
    capped = retention.plan(names, NOW, rotate=2, retention=policy)
    assert kept(capped) == names[:2]
    assert capped[2].reason == "beyond rotate 2, though younger than max-age 3d"


def test_retention_config_errors() -> None:
    base = {"etcd": {"endpoints": ["http://127.0.0.1:2379"]}}
    assert parse_config({**base, "retention": {"max-age": "720h", "daily": 7}}, {}).retention == RetentionConfig(
        max_age=720 * 3600, daily=7)
    for section, message in [({}, "retention: give max-age, or at least one of hourly, daily, weekly"),
                             ({"hourly": -1}, "retention.hourly: must be at least 0"),
                             ({"monthly": 3}, "retention.monthly: unknown key"),
                             ({"max-age": "a month"}, "retention.max-age: ")]:
        with pytest.raises(ConfigError, match=message):
            parse_config({**base, "retention": section}, {})


@pytest.mark.parametrize("where", ["local", "seaweedfs"])
def test_prune_command_dry_run_then_for_real(where: str, request: pytest.FixtureRequest, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC)
    names = [backup_name(now - timedelta(days=days)) for days in (0, 1, 10, 20)]
    others = ["notes.txt", backup_name(now - timedelta(days=30)) + ".bak"]  # not backups: never deleted
    config, stored_names = _store_config(where, request, tmp_path, dict.fromkeys(names + others, b"x"))
    store = open_store(load_config(config))
    main(["prune", "--config", str(config), "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"keep         {names[0]}  the newest backup",
                     f"keep         {names[1]}  younger than max-age 5d",
                     f"would delete {names[2]}  older than max-age 5d",
                     f"would delete {names[3]}  older than max-age 5d"]
    assert store.list_backups() == sorted(names)
    main(["prune", "--config", str(config)])
    assert capsys.readouterr().out.count("deleted ") == 2
    assert store.list_backups() == sorted(names[:2])
    assert stored_names() == sorted(names[:2] + others)


def test_a_stale_backup_never_takes_the_place_of_a_current_one() -> None:
    """allow-stale-member: stale backups are kept apart from rotate's count, and only while no current
    backup is newer."""
    old, older_stale = backup_name(NOW - timedelta(hours=3)), backup_name(NOW - timedelta(hours=4), stale=True)
    current = backup_name(NOW - timedelta(hours=2))
    stale = [backup_name(NOW - timedelta(hours=hours), stale=True) for hours in (1.5, 1, 0.5)]
    decisions = {d.name: d for d in retention.plan([old, older_stale, current, *stale], NOW, rotate=1,
                                                   retention=None)}
    assert decisions[current].keep and decisions[current].reason == "the newest backup"
    assert not decisions[old].keep
    assert not decisions[older_stale].keep and "current backup" in decisions[older_stale].reason
    assert [decisions[name].keep for name in stale] == [False, False, True]
    assert "beyond the newest 1 stale" in decisions[stale[0]].reason


def test_names_say_stale_and_newest_is_always_current() -> None:
    stale = backup_name(NOW, stale=True)
    assert stale == f"snapshot-{NOW:%Y%m%d_%H%M%S}.stale.tar.gz"
    assert backups.is_backup_name(stale) and backups.is_stale(stale)
    assert backups.member_name(stale).endswith(".stale.db")
    current = backup_name(NOW - timedelta(hours=1))
    assert backups.newest([current, stale], NOW) == current
    assert backups.newest([current, stale], NOW, stale=True) == stale


@pytest.mark.parametrize("where", ["local", "seaweedfs"])
def test_prune_deletes_the_deltas_no_kept_full_backup_precedes(where: str, request: pytest.FixtureRequest,
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Backups at revisions 400, 300 (kept: max-age), 200, 100 (deleted): the deltas whose revisions all come at or
    before 300 go, with them; one that reaches past 300 stays, as do those after it."""
    now = datetime.now(UTC)
    names = [backup_name(now - timedelta(days=days)) for days in (0, 1, 10, 20)]
    files = {name: b"x" for name in names}
    for name, revision in zip(names, (400, 300, 200, 100), strict=True):
        started = backups.backup_time(name)
        assert started is not None
        files[backups.metadata_name(name)] = BackupMetadata(name, 1, "c", "m", "e", revision, "3.4.23", 1, "0" * 64,
                                                            started.isoformat(), 0.1).to_bytes()
    seen = now - timedelta(days=30)
    deltas = [str(DeltaName(first, last, seen, seen, encrypted=False))
              for first, last in ((101, 150), (151, 250), (251, 300), (290, 310), (301, 350), (351, 450))]
    files.update({name: b"delta" for name in deltas})
    store = open_store(load_config(_store_config(where, request, tmp_path, files)[0]))
    config = str(tmp_path / "config.yml")

    main(["prune", "--config", config, "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    why = f"no kept full backup precedes it: the oldest, {names[1]}, holds revision 300"
    assert lines[4:] == [f"would delete {name}  {why}" for name in deltas[:3]] + [
        f"keep         3 deltas, {deltas[3]} to {deltas[5]}  follows the kept full backup {names[1]} (revision 300)"]
    assert store.list_deltas() == deltas
    main(["prune", "--config", config])
    assert capsys.readouterr().out.count("deleted      delta-") == 3
    assert store.list_deltas() == deltas[3:] and store.list_backups() == sorted(names[:2])


def test_deltas_are_kept_while_no_backup_tells_which_are_needed(tmp_path: Path) -> None:
    """No kept backup has metadata (or there is none yet): every delta is kept."""
    store = LocalStore(tmp_path)
    delta = str(DeltaName(1, 5, NOW, NOW, encrypted=False))
    (tmp_path / delta).write_bytes(b"delta")
    (tmp_path / names_at(timedelta(0))[0]).write_bytes(b"x")
    decisions = retention.prune(store, NOW, rotate=1, retention=None)
    assert [(d.name, d.keep) for d in decisions][1:] == [(delta, True)] and store.list_deltas() == [delta]


def _store_config(where: str, request: pytest.FixtureRequest, tmp_path: Path,
                  files: dict[str, bytes]) -> tuple[Path, Callable[[], list[str]]]:
    """A config (max-age 5 days) whose store, a backup-dir or a bucket's prefix, holds `files`; and a function that
    lists every name the store holds then (backups or not)."""
    if where == "local":
        backup_dir = tmp_path / "backups"
        backup_dir.mkdir(mode=0o700)
        settings: dict[str, Any] = {"backup-dir": str(backup_dir)}
        for name, data in files.items():
            (backup_dir / name).write_bytes(data)
        stored_names: Callable[[], list[str]] = lambda: sorted(os.listdir(backup_dir))  # noqa: E731
    else:
        server: S3Server = request.getfixturevalue(where)
        bucket, prefix = server.place()
        settings = server.settings(bucket, prefix)
        client = server.client()
        for name, data in files.items():
            client.put_object(Bucket=bucket, Key=prefix + name, Body=data)
        stored_names = lambda: sorted(item["Key"].removeprefix(prefix)  # noqa: E731
                                      for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
    config = write_config(tmp_path / "config.yml", {**settings, "etcd": {"endpoints": ["http://127.0.0.1:1"]},
                                                    "retention": {"max-age": "120h"}})
    return config, stored_names
