"""Why a backup failed, in words an operator can act on."""

from __future__ import annotations


class BackupError(Exception):
    """A backup failed for a known reason; the message names the cause."""


class SnapshotError(BackupError):
    """etcd's snapshot stream was incomplete or failed its SHA-256 check."""
