"""What is recorded about each backup, in a JSON file beside its archive in backup-dir.

`snapshot-YYYYMMDD_HHMMSS.tar.gz.json` goes with `snapshot-YYYYMMDD_HHMMSS.tar.gz`: written (atomically)
just before the archive is linked into place, deleted with it. backup-dir stays the single source of
truth: Redis may be empty, the list with details and the metrics still know every backup.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from common.backups import METADATA_SUFFIX, fsync_dir, is_backup_name, metadata_name, temp_name


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
    key_count: int | None = None
    """Keys in etcd at `revision` (None in metadata written before it was recorded)."""
    drill: dict[str, Any] | None = None
    """The last restore drill of this backup: time, outcome, reason, seconds (recovery.drill)."""

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
    """The metadata of a backup, or None if it has none (taken by an older version, or by hand)."""
    try:
        raw = json.loads((backup_dir / metadata_name(archive_name)).read_bytes())
        return BackupMetadata(**raw)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def remove_metadata(backup_dir: Path, archive_name: str) -> None:
    (backup_dir / metadata_name(archive_name)).unlink(missing_ok=True)


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
            (backup_dir / name).unlink(missing_ok=True)
            removed.append(name)
    return removed
