"""Where backups are kept: `open_store(config)` gives the backend that `backup-dir` names
(common.storage.interface says what every backend does; common.storage.local is backup-dir on a file system)."""

from __future__ import annotations

from common.config import Config
from common.storage.interface import BackupStore, OpenedBackup, PendingBackup, StorageError, StoredFile
from common.storage.local import LocalStore

__all__ = ["BackupStore", "LocalStore", "OpenedBackup", "PendingBackup", "StorageError", "StoredFile", "open_store"]


def open_store(config: Config) -> BackupStore:
    """The store that `backup-dir` names."""
    return LocalStore(config.backup_dir)
