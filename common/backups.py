"""The backup directory: file naming, listing, rotation and temp-file hygiene.

Only names of the form `snapshot-YYYYMMDD_HHMMSS.tar.gz` are backups. Everything else in the
directory (temp files, an operator's notes, a symlink) is never listed, served or deleted.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

logger = logging.getLogger(__name__)

BACKUP_SUFFIX = ".tar.gz"
NAME_TIME_FORMAT = "%Y%m%d_%H%M%S"
BACKUP_NAME = re.compile(r"snapshot-(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})(\d{2})\.tar\.gz")
# Temp files are hidden (leading dot) so that `ls` and globbing tools skip them too.
TEMP_PREFIX = ".snapshot-"
TEMP_SUFFIX = ".part"
METADATA_SUFFIX = ".json"
"""A backup's metadata (common.metadata) is in a file named after the archive, plus this."""
FUTURE_TOLERANCE = timedelta(seconds=60)
"""How far a backup's name may be ahead of the clock (common.clock) and still be placed in time.

Backups are named from Redis' clock, and readers compare with it too; the slack covers a reader that
falls back to its own clock (Redis down), and NTP keeps hosts well within a second of each other
(etcd itself warns at a 1 s drift between members). A clock set wrong is off by minutes to hours (a
time zone, a dead RTC): far beyond it. Kept small because a backup named within it counts as the
newest until the clock passes it.
"""


def backup_name(started: datetime) -> str:
    """Return the archive name for a snapshot started at `started` (UTC)."""
    return f"snapshot-{started.astimezone(UTC).strftime(NAME_TIME_FORMAT)}{BACKUP_SUFFIX}"


def member_name(archive_name: str) -> str:
    """Return the name of the snapshot file inside archive `archive_name`."""
    return archive_name.removesuffix(BACKUP_SUFFIX) + ".db"


def backup_time(name: str) -> datetime | None:
    """Return the UTC time encoded in a backup name, or None if `name` is not a backup name."""
    match = BACKUP_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        # datetime() from the digits, not strptime(): ten times faster, and listings parse every name.
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:  # well-formed digits, impossible date such as month 13
        return None


def is_backup_name(name: str) -> bool:
    return backup_time(name) is not None


def list_backups(backup_dir: Path, now: datetime | None = None) -> list[str]:
    """Return the names of complete backups in `backup_dir`, oldest first (see in_time_order when `now` is given)."""
    names = []
    with os.scandir(backup_dir) as entries:
        for entry in entries:
            if not is_backup_name(entry.name):
                continue
            # follow_symlinks=False: a symlink planted in the directory must never be served.
            if entry.is_file(follow_symlinks=False):
                names.append(entry.name)
            else:
                report_once(backup_dir / entry.name, "skipped: not a regular file")
    # The timestamp is fixed-width, so name order is time order.
    return sorted(names) if now is None else in_time_order(names, now)


def in_time_order(names: list[str], now: datetime) -> list[str]:
    """Return backup `names` oldest first, those named in the future (is_future) first of all.

    A name in the future cannot be when its backup was taken: it was written by a host whose clock
    was ahead (or planted). Its real time is unknown, so it never counts as the newest backup: not
    for the list's last entry (a client's "latest"), rotation, the metrics or the drill.
    """
    ordered = sorted(names)
    # Everything after the newest name that is not in the future is in the future.
    cut = bisect.bisect_right(ordered, backup_name(now + FUTURE_TOLERANCE))
    future = ordered[cut:]
    for name in future:
        report_once(Path(name), f"is named more than {FUTURE_TOLERANCE.seconds} s after the clock (a host's clock was "
                          "ahead): listed as the oldest, never counted as the newest")
    return future + ordered[:cut]


def is_future(name: str, now: datetime) -> bool:
    """Whether backup `name` is named more than FUTURE_TOLERANCE after `now`."""
    return name > backup_name(now + FUTURE_TOLERANCE)


def newest(names: list[str], now: datetime) -> str | None:
    """The newest of backup `names` that is not named in the future, if any."""
    ordered = in_time_order(names, now)
    return ordered[-1] if ordered and not is_future(ordered[-1], now) else None


_reported: set[tuple[Path, str]] = set()


def report_once(path: Path, what: str) -> None:
    """Log, once per process, a file of backup-dir that is not taken for what its name says.

    Once: listings run on every request, and a file that stays would fill the log.
    """
    if (path, what) not in _reported:
        _reported.add((path, what))
        logger.warning("backup-dir: %s %s", path, what)


def metadata_name(archive_name: str) -> str:
    return archive_name + METADATA_SUFFIX


def backup_path(backup_dir: Path, name: str) -> Path | None:
    """Return the path of backup `name` if it is a backup name and exists as a regular file, else None.

    A backup name cannot contain a path separator; a well-formed name with an impossible time
    (month 13) is never a backup, even if such a file was put there.
    """
    if not is_backup_name(name):
        return None
    path = backup_dir / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return path if stat.S_ISREG(st.st_mode) else None


def delete_backup(backup_dir: Path, name: str) -> bool:
    """Delete a backup and its metadata; return False if another process deleted it first."""
    deleted = remove_file(backup_dir / name)
    remove_file(backup_dir / metadata_name(name))
    return deleted


def remove_file(path: Path) -> bool:
    """Unlink `path`; return False if it was not there, or is a directory (logged and left alone).

    unlink() never opens or follows what it removes, so a FIFO or a symlink planted under the name
    goes like a file; a directory would make unlink() fail, and with it the rotation or the backup.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        report_once(path, "skipped: a directory")
        return False
    return True


def temp_name(name: str, tag: str) -> str:
    """The hidden name under which the archive `name` is written by the backup tagged `tag`."""
    return f"{TEMP_PREFIX}{name.removeprefix('snapshot-')}.{tag}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def temp_tag(name: str) -> str:
    return name.removesuffix(TEMP_SUFFIX).rsplit(".", 1)[-1]


def remove_temp_files(backup_dir: Path, active_tag: Callable[[], str | None]) -> list[str]:
    """Remove temp files left by interrupted backups: all but those tagged with `active_tag()`.

    A backup creates its temp file only while it holds the backup lock. So a temp file that exists
    now and is not tagged as the live holder of the lock, asked after the listing, is a dead
    backup's (worker.leases.live_backup).
    """
    temp_files = []
    with os.scandir(backup_dir) as entries:
        for entry in entries:
            if not is_temp_name(entry.name):
                continue
            if entry.is_file(follow_symlinks=False):
                temp_files.append(entry.name)
            else:  # no backup writes one of these: not ours to remove
                report_once(backup_dir / entry.name, "skipped: not a regular file")
    active = active_tag()
    removed = []
    for name in temp_files:
        if temp_tag(name) == active:
            continue
        if not remove_file(backup_dir / name):  # another worker cleaned it up first
            continue
        removed.append(name)
        logger.warning("removed %s, left by an interrupted backup", name)
    return removed


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
