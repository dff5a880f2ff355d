"""What is recorded about each backup, in a JSON file beside its archive in backup-dir.

`snapshot-YYYYMMDD_HHMMSS.tar.gz.json` goes with `snapshot-YYYYMMDD_HHMMSS.tar.gz`: written (atomically)
just before the archive is linked into place, deleted with it. backup-dir stays the single source of
truth: Redis may be empty, the list with details and the metrics still know every backup.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from common.backups import (
    METADATA_SUFFIX,
    fsync_dir,
    is_backup_name,
    metadata_name,
    remove_file,
    report_once,
    temp_name,
)

MAX_METADATA_BYTES = 64 << 10
"""A metadata file is under 1 KiB; a bigger one is not ours, and is not read (nor held in memory)."""


@dataclass(frozen=True)
class BackupMetadata:
    filename: str
    filesize: int
    """Bytes of the .tar.gz archive."""
    cluster_id: str
    member_id: str
    endpoint: str
    revision: int
    etcd_version: str
    db_size: int
    """Bytes of the etcd database in the snapshot (without the 32-byte SHA-256 trailer)."""
    db_sha256: str
    """SHA-256 of the database bytes: the trailer etcd sent, checked against the data."""
    started: str
    """When the snapshot started, UTC, ISO 8601."""
    duration: float
    """Seconds from connecting to etcd to the archive being durable."""
    archive_sha256: str | None = None
    """SHA-256 of the .tar.gz archive, hex, computed as it was written: downloads carry it (None in older
    metadata)."""
    key_count: int | None = None
    """Keys in etcd at `revision` (None: see key_count_error, or metadata older than the count)."""
    key_count_error: str | None = None
    """Why etcd could not count the keys, when key_count is None."""
    revision_at_end: int | None = None
    """The member's revision when the snapshot was received. The snapshot holds a revision from
    `revision` (the cluster's, read from the quorum through the member just before) to this one:
    exactly `revision` when they are equal. None in older metadata."""
    leader: bool | None = None
    """Whether the member snapshotted was the raft leader."""
    raft_term: int | None = None
    raft_index: int | None = None
    alarms: list[str] | None = None
    """etcd's active alarms when the backup was taken, e.g. `NOSPACE on <member id>`."""
    drill: dict[str, Any] | None = None
    """The last restore drill of this backup: time, outcome, reason, seconds (worker.drill)."""

    def snapshot_revision(self) -> int | None:
        """The revision the snapshot holds, if known exactly (metadata older than revision_at_end: `revision`)."""
        return self.revision if self.revision_at_end in (None, self.revision) else None

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict(): its deep copy was half the time of a 1,000-backup detail listing.
        return {field.name: getattr(self, field.name) for field in fields(self)}


def write_metadata(backup_dir: Path, metadata: BackupMetadata, tag: str, replace: bool = False) -> None:
    """Write the metadata file of `metadata.filename` durably, via a temp file tagged `tag`.

    Like archives, a new one is linked into place (FileExistsError rather than replacing another's);
    `replace=True` updates the metadata of an existing backup (to record a drill), atomically.
    """
    final = backup_dir / metadata_name(metadata.filename)
    temp = backup_dir / temp_name(metadata_name(metadata.filename), tag)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(metadata.to_json(), out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(temp, final)
        else:
            os.link(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(backup_dir)


def read_metadata(backup_dir: Path, archive_name: str) -> BackupMetadata | None:
    """The metadata of a backup, or None if it has none (taken by an older version, or by hand), or
    if what is there is no regular file of ours (logged)."""
    path = backup_dir / metadata_name(archive_name)
    raw = _read_regular_file(path, MAX_METADATA_BYTES)
    if raw is None:
        return None
    try:
        return BackupMetadata(**json.loads(raw))
    except (ValueError, TypeError):
        report_once(path, "skipped: not backup metadata")
        return None


def _read_regular_file(path: Path, limit: int) -> bytes | None:
    """The bytes of `path` if it is a regular file of at most `limit` bytes, else None (logged if it is there).

    O_NOFOLLOW: a symlink (to /dev/zero, to another user's file) is never followed. O_NONBLOCK: opening
    a FIFO does not wait for a writer, and fstat() then tells it is no file. A file that grows after
    fstat() is still read no further than the limit.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        report_once(path, "skipped: a symlink" if exc.errno == errno.ELOOP else f"skipped: {exc.strerror}")
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            report_once(path, "skipped: not a regular file")
            return None
        data = b""
        while len(data) <= limit and (chunk := os.read(fd, limit + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:
        report_once(path, f"skipped: larger than {limit} bytes")
        return None
    return data


def remove_metadata(backup_dir: Path, archive_name: str) -> None:
    remove_file(backup_dir / metadata_name(archive_name))


def remove_orphan_metadata(backup_dir: Path) -> list[str]:
    """Remove metadata files whose archive is gone (a crash between the two links); call only while
    holding the backup lock, when no backup is between writing its metadata and linking its archive."""
    removed = []
    with os.scandir(backup_dir) as entries:
        names = [entry.name for entry in entries]
    present = set(names)
    for name in names:
        archive = name.removesuffix(METADATA_SUFFIX)
        if name != archive and is_backup_name(archive) and archive not in present:
            if remove_file(backup_dir / name):
                removed.append(name)
    return removed
