"""A store whose readers see only what this service signed (common.signing), whoever else writes to it.

`open_store` wraps the backend in an AuthenticatedStore when `signing` is configured. Writes are signed on
their way in: a backup's metadata when it is published or updated (a drill's record), a delta's name when it
is stored. Reads take only what the verify key accepts:

- a backup counts only with metadata whose signature verifies, and an archive of the size it records: the
  list, `latest`, the metrics and status, the drill, retention and restore never see another (its SHA-256, also
  in the metadata, is checked by whoever reads the archive: recovery.verify);
- a delta counts only under a signed name, and its bytes only if their SHA-256 is the one its name signs.

What is refused is logged once, naming it, and never deleted: not ours, so not ours to remove.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from common.backups import report_once
from common.deltas import DeltaError, parse_delta_name
from common.metadata import BackupMetadata
from common.signing import BadKey, Signer, Verifier, VerifyKey, decode, encode, read_signing_key
from common.storage.interface import (
    BackupStore,
    CatalogEntry,
    OpenedBackup,
    PendingBackup,
    StorageError,
    StoredFile,
)

UNSIGNED = ("has no signature (taken before signing was configured, or put there by someone else): not listed, "
            "restored, drilled or counted (restore --allow-unsigned takes it)")
FORGED = "has a signature that this service's verify key does not accept (planted, edited, or another key's): refused"
CHECKED_KEPT = 100_000
"""Metadata objects whose verdict is remembered (each kept alive by the memory, so its id is never reused)."""
ALL_IN_ORDER = datetime(9000, 1, 1, tzinfo=UTC)
"""A `now` that places every backup name in plain name order (common.backups.in_time_order)."""


@functools.lru_cache(maxsize=4)
def verifier_of(key: VerifyKey) -> Verifier:
    """One Verifier per key and process, so that its memory of good signatures serves every request."""
    return key.verifier()


class AuthenticatedStore:
    """`inner`, as only this service's objects: signed with the key that `verify_key` checks."""

    def __init__(self, inner: BackupStore, verify_key: VerifyKey, key_file: Path | None) -> None:
        self.inner = inner
        self.where = inner.where
        self.verifier = verifier_of(verify_key)
        self._key_file = key_file
        self._signer: Signer | None = None
        self._checked: dict[int, tuple[BackupMetadata, bool]] = {}

    def __repr__(self) -> str:
        return f"AuthenticatedStore({self.inner!r}, {self.verifier.key.fingerprint})"

    # What is ours

    def authentic(self, metadata: BackupMetadata | None, name: str) -> bool:
        """Whether backup `name`'s `metadata` is signed with our key (said once if not)."""
        if metadata is None:
            return False
        # The same object again (a store's metadata cache gives it while the file is unchanged): the same answer,
        # without spelling out and hashing what it signs (a listing of 1,000 backups asks 1,000 times).
        checked = self._checked.get(id(metadata))
        if checked is not None and checked[0] is metadata:
            return checked[1]
        if len(self._checked) >= CHECKED_KEPT:
            self._checked.clear()
        self._checked[id(metadata)] = (metadata, self._signed_by_us(metadata, name))
        return self._checked[id(metadata)][1]

    def _signed_by_us(self, metadata: BackupMetadata, name: str) -> bool:
        signature = decode(metadata.signature, 64) if metadata.signature is not None else None
        if signature is None or not self.verifier.verify(metadata.signed_message(), signature):
            report_once(name, UNSIGNED if metadata.signature is None else FORGED)
            return False
        return True

    def _authentic_delta(self, name: str) -> bytes | None:
        """The SHA-256 that delta `name`'s signed name gives its bytes, or None if the name is not ours."""
        said = parse_delta_name(name)
        if said is None:
            return None
        if said.stored_sha256 is None or said.signature is None:
            report_once(name, UNSIGNED)
            return None
        if not self.verifier.verify(said.signed_message(said.stored_sha256), said.signature):
            report_once(name, FORGED)
            return None
        return said.stored_sha256

    def not_ours(self, now: datetime) -> list[str]:
        """The backups and deltas of the store that are not ours (unsigned or forged): what status counts."""
        backups = [entry.name for entry in self.inner.catalog(now) if not self.authentic(entry.metadata, entry.name)]
        return backups + [name for name in self.inner.list_deltas() if self._authentic_delta(name) is None]

    def signer(self) -> Signer:
        """The signing key (read when first needed: the processes that only read never hold it)."""
        if self._signer is None:
            if self._key_file is None:
                raise StorageError("this process has no signing key (signing.key-file): what it stored would be "
                                   "refused by every reader")
            try:
                signer = read_signing_key(self._key_file)
            except (OSError, BadKey) as exc:
                raise StorageError(f"cannot read the signing key {self._key_file}: "
                                   f"{getattr(exc, 'strerror', None) or exc}") from None
            if signer.verify_key != self.verifier.key:
                raise StorageError(f"the signing key {self._key_file} is not the one signing.verify-key names")
            self._signer = signer
        return self._signer

    def _signed(self, metadata: BackupMetadata) -> BackupMetadata:
        unsigned = dataclasses.replace(metadata, signature=None)
        return dataclasses.replace(unsigned, signature=encode(self.signer().sign(unsigned.signed_message())))

    # Backups

    def prepare(self) -> None:
        self.inner.prepare()

    def check(self) -> None:
        self.inner.check()

    def list_backups(self, now: datetime | None = None) -> list[str]:
        return [entry.name for entry in self.catalog(now or ALL_IN_ORDER)]

    def taken_names(self) -> set[str]:
        return self.inner.taken_names()

    def catalog(self, now: datetime) -> list[CatalogEntry]:
        return [entry for entry in self.inner.catalog(now)
                if self.authentic(entry.metadata, entry.name) and self._whole(entry.name, entry.metadata, entry.stored)]

    def _whole(self, name: str, metadata: BackupMetadata | None, stored: StoredFile | None) -> bool:
        """Whether the archive stored is the size the signed metadata records (a swapped archive mostly is not;
        its SHA-256 tells the rest, when it is read)."""
        if stored is not None and metadata is not None and stored.size != metadata.filesize:
            report_once(name, f"is {stored.size} bytes, its signed metadata says {metadata.filesize}: replaced or "
                              "damaged, refused")
            return False
        return stored is not None

    def stat(self, name: str) -> StoredFile | None:
        metadata = self.read_metadata(name)
        stored = self.inner.stat(name) if metadata is not None else None
        return stored if self._whole(name, metadata, stored) else None

    def open(self, name: str) -> OpenedBackup | None:
        metadata = self.read_metadata(name)
        opened = self.inner.open(name) if metadata is not None else None
        if opened is not None and not self._whole(name, metadata, opened.stored):
            opened.file.close()
            return None
        return opened

    def download_url(self, name: str) -> str | None:
        return self.inner.download_url(name) if self.stat(name) is not None else None

    def read_metadata(self, name: str) -> BackupMetadata | None:
        metadata = self.inner.read_metadata(name)
        return metadata if self.authentic(metadata, name) else None

    def update_metadata(self, metadata: BackupMetadata) -> None:
        self.inner.update_metadata(self._signed(metadata))

    @contextmanager
    def new_backup(self, name: str, tag: str) -> Iterator[PendingBackup]:
        self.signer()  # before etcd streams a byte: a backup that could not be signed is no backup
        with self.inner.new_backup(name, tag) as pending:
            yield _SigningPendingBackup(pending, self._signed)

    def delete(self, name: str) -> bool:
        return self.inner.delete(name)

    def remove_unpublished(self, live_tag: Callable[[], str | None]) -> list[str]:
        return self.inner.remove_unpublished(live_tag)

    def remove_orphan_metadata(self) -> list[str]:
        return self.inner.remove_orphan_metadata()

    # Deltas

    def put_delta(self, name: str, data: bytes) -> str:
        said = parse_delta_name(name)
        if said is None:
            raise StorageError(f"{name!r} is not a delta's name")
        digest = hashlib.sha256(data).digest()
        signed = dataclasses.replace(said, stored_sha256=digest,
                                     signature=self.signer().sign(said.unsigned().signed_message(digest)))
        return self.inner.put_delta(str(signed), data)

    def list_deltas(self) -> list[str]:
        return [name for name in self.inner.list_deltas() if self._authentic_delta(name) is not None]

    def read_delta(self, name: str) -> bytes | None:
        digest = self._authentic_delta(name)
        data = self.inner.read_delta(name) if digest is not None else None
        if data is not None and hashlib.sha256(data).digest() != digest:
            raise DeltaError(f"{name}: its bytes are not the ones its signed name names: replaced or damaged")
        return data

    def delete_delta(self, name: str) -> bool:
        return self.inner.delete_delta(name)


class _SigningPendingBackup:
    """A backend's pending backup whose metadata is signed as it is published."""

    def __init__(self, pending: PendingBackup, sign: Callable[[BackupMetadata], BackupMetadata]) -> None:
        self.pending, self.sign, self.name = pending, sign, pending.name

    def write(self, data: bytes) -> int:
        return self.pending.write(data)

    def flush(self) -> None:
        self.pending.flush()

    def publish(self, metadata: BackupMetadata) -> None:
        self.pending.publish(self.sign(metadata))

