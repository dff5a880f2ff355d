"""Where backups are kept: `open_store(config)` gives the backend that `backup-dir` names
(common.storage.interface says what every backend does; common.storage.local is backup-dir on a file system)."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from common.config import Config
from common.config.schema import S3Config
from common.storage.authenticated import AuthenticatedStore
from common.storage.interface import BackupStore, CatalogEntry, OpenedBackup, PendingBackup, StorageError, StoredFile
from common.storage.local import LocalStore

if TYPE_CHECKING:
    from common.storage.s3 import S3Store

__all__ = ["AuthenticatedStore", "BackupStore", "CatalogEntry", "LocalStore", "OpenedBackup", "PendingBackup",
           "S3Store", "StorageError", "StoredFile", "open_store"]


def open_store(config: Config, allow_unsigned: bool = False) -> BackupStore:
    """The store that `backup-dir` names: a directory, or an s3:// bucket; with `signing` configured, only what
    this service signed is read from it (common.storage.authenticated), unless `allow_unsigned` (an operator's
    restore of a backup taken before signing was configured)."""
    backend: BackupStore = _s3_store(config.s3, os.getpid()) if config.s3 is not None else LocalStore(config.backup_dir)
    if config.signing is None or allow_unsigned:
        return backend
    return AuthenticatedStore(backend, config.signing.verify_key, config.signing.key_file)


@functools.lru_cache(maxsize=8)
def _s3_store(settings: S3Config, pid: int) -> S3Store:
    """One per settings and process: a boto3 client takes tens of milliseconds to make, and is thread-safe.
    Per process, by `pid`: gunicorn's master checks the bucket, then forks its workers, which must not
    share the master's open connections (two processes on one socket mix their answers)."""
    from common.storage.s3 import S3Store  # deferred: boto3 takes a quarter of a second to load, a local store none

    return S3Store(settings)


def __getattr__(name: str) -> Any:
    """`common.storage.S3Store`, loaded (with boto3) when first asked for: a restore from a file never needs it."""
    if name == "S3Store":
        from common.storage.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
