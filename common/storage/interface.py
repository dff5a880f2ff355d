"""Where backups are kept: the interface every backend implements.

The API, the workers, retention, the metrics and the recovery code ask a `BackupStore` for backups
and never look at backup-dir themselves, so a second backend (object storage) drops in here
without touching them. The rules every backend keeps:

- Only names of the form `snapshot-YYYYMMDD_HHMMSS.tar.gz` (common.backups) that hold bytes are
  backups; anything else the store holds is never listed, served or deleted.
- A new backup becomes visible only when complete and durable, together with its metadata, and never
  replaces another backup: a name that is taken fails the new backup, not the old one.
- Whatever fails while a backup is written, nothing of it is left visible.

Deltas (common.deltas: the etcd events between full backups) follow the same rules: only names that
common.deltas.parse_delta_name reads are deltas, one is visible only once durable, and never replaces another.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol

from common.metadata import BackupMetadata


class StorageError(Exception):
    """The store cannot take or keep a backup; the message says why, for the API's 500 and the log."""


@dataclass(frozen=True)
class StoredFile:
    """What the store knows of a backup's archive without reading it."""

    size: int
    modified: float
    """Unix time of the last change, for Last-Modified (backup times come from names, never from this)."""
    etag: str
    """Changes whenever the archive may have: HTTP's conditional and resumed downloads rely on it."""


@dataclass(frozen=True)
class CatalogEntry:
    """A complete backup as one listing shows it: its archive and its metadata (None: it has none, or what is
    there is not ours)."""

    name: str
    stored: StoredFile
    metadata: BackupMetadata | None


@dataclass(frozen=True)
class OpenedBackup:
    """A backup's archive open for reading: seekable, so that ranges can be served. The reader closes `file`."""

    file: BinaryIO
    stored: StoredFile


class PendingBackup(Protocol):
    """A new backup being written: invisible until `publish`, gone if the writing fails."""

    name: str

    def write(self, data: bytes) -> int: ...

    def flush(self) -> None: ...

    def publish(self, metadata: BackupMetadata) -> None:
        """Make the archive written so far and its metadata durable and visible, or raise StorageError
        and leave neither: a backup with this name already there is never replaced."""


class BackupStore(Protocol):
    where: str
    """Where the backups are, as messages and logs name it, e.g. "backup-dir /var/lib/etcd-backup"."""

    def prepare(self) -> None:
        """Make the store usable at start-up (create the directory, check access), or raise StorageError."""

    def check(self) -> None:
        """Raise (an OSError or StorageError) if the backups cannot be read now: /readyz's check."""

    def list_backups(self, now: datetime | None = None) -> list[str]:
        """The names of complete backups, oldest first (common.backups.in_time_order when `now` is given)."""

    def taken_names(self) -> set[str]:
        """Every backup name that something in the store holds, listed or not (an empty file, a symlink, what is not
        ours): a new backup under one of them would fail."""

    def catalog(self, now: datetime) -> list[CatalogEntry]:
        """Every complete backup with its archive's facts and its metadata, in list_backups' order: what
        ?detail=true and /metrics show. Cheap to call again: a bucket is listed once, and only metadata that
        changed since the last call is read."""

    def stat(self, name: str) -> StoredFile | None:
        """The archive of backup `name`, or None if there is no such backup (or it went since the listing)."""

    def open(self, name: str) -> OpenedBackup | None:
        """Open the archive of backup `name` for reading; None if there is no such backup."""

    def download_url(self, name: str) -> str | None:
        """A short-lived URL a client may fetch backup `name` from directly, if the store gives one and is
        set to (s3.presign-downloads); None: the API passes the bytes through (also when there is no such
        backup: the caller answers 404 from stat or open)."""

    def read_metadata(self, name: str) -> BackupMetadata | None:
        """The metadata of backup `name`, or None if it has none (an older version's backup, one taken by
        hand) or what is there is not ours (logged)."""

    def update_metadata(self, metadata: BackupMetadata) -> None:
        """Replace the metadata of an existing backup (to record a drill), atomically. Runs without the
        backup lock: remove_unpublished must never take it for a dead backup's data."""

    def new_backup(self, name: str, tag: str) -> AbstractContextManager[PendingBackup]:
        """Begin backup `name`; `tag` (the job's id) marks its unpublished data as the live backup's
        (see remove_leftovers). Leaving the context unpublished removes all of it."""

    def delete(self, name: str) -> bool:
        """Delete backup `name` and its metadata; False if it was not there (another process was first)."""

    def remove_unpublished(self, live_tag: Callable[[], str | None]) -> list[str]:
        """Remove the unpublished data of interrupted backups, and never the live one's: `live_tag()`, asked
        after looking, is the tag of the live backup that holds the lock (worker.leases.live_backup), or None.
        A backend that cannot tell the live one's data apart removes nothing while one is live."""

    def remove_orphan_metadata(self) -> list[str]:
        """Remove metadata whose archive is gone (a crash between the two steps of publishing). Call only
        while holding the backup lock, when no backup is between them."""


    def put_delta(self, name: str, data: bytes) -> str:
        """Store delta `name` (common.deltas), durably, before returning the name it is stored under (signed, in
        an authenticated store); StorageError if it cannot, or if a delta of that name is there already (it is
        never replaced)."""

    def list_deltas(self) -> list[str]:
        """The names of the stored deltas that hold bytes, in revision order (name order)."""

    def read_delta(self, name: str) -> bytes | None:
        """The stored bytes of delta `name`, at most common.deltas.MAX_STORED_BYTES + 1 of them (a bigger one is
        not ours: the reader refuses it); None if there is no such delta."""

    def delete_delta(self, name: str) -> bool:
        """Delete delta `name`; False if it was not there."""
