"""The backup directory: file naming, listing, rotation and temp-file hygiene.

Only names of the form `snapshot-YYYYMMDD_HHMMSS.tar.gz` are backups. Everything else in the
directory (temp files, an operator's notes, a symlink) is never listed, served or deleted.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable
from datetime import UTC, datetime
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


def list_backups(backup_dir: Path) -> list[str]:
    """Return the names of complete backups in `backup_dir`, oldest first."""
    names = []
    with os.scandir(backup_dir) as entries:
        for entry in entries:
            # follow_symlinks=False: a symlink planted in the directory must never be served.
            if is_backup_name(entry.name) and entry.is_file(follow_symlinks=False):
                names.append(entry.name)
    # The timestamp is fixed-width, so name order is time order.
    return sorted(names)


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
    try:
        os.unlink(backup_dir / name)
    except FileNotFoundError:
        return False
    finally:
        (backup_dir / metadata_name(name)).unlink(missing_ok=True)
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
    with os.scandir(backup_dir) as entries:
        temp_files = [entry.name for entry in entries
                      if is_temp_name(entry.name) and entry.is_file(follow_symlinks=False)]
    active = active_tag()
    removed = []
    for name in temp_files:
        if temp_tag(name) == active:
            continue
        try:
            os.unlink(backup_dir / name)
        except FileNotFoundError:  # another worker cleaned it up first
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
