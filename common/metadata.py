"""What is recorded about each backup, as JSON kept beside its archive by the store (common.storage).

`snapshot-YYYYMMDD_HHMMSS.tar.gz.json` goes with `snapshot-YYYYMMDD_HHMMSS.tar.gz`: published with it,
deleted with it. The store stays the single source of truth: Redis may be empty, the list with
details and the metrics still know every backup.
"""

from __future__ import annotations

import json
import re
import types
import typing
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from common.backups import ENCRYPTED_SUFFIX, backup_time, is_compacted

SIGNED_CONTEXT = b"etcd-backup metadata 1\n"
"""Begins what a metadata signature signs: no other object's signature (a delta's) can pass for one."""
MAX_DURATION = 2 * 3600.0
"""Seconds a backup may have lasted: a job ends at backup-timeout (1 h at most). A longer one is not ours: it
would make the backup complete long after its name, and keep a dead service looking fresh in /metrics."""
MAX_METADATA_BYTES = 64 << 10
"""A metadata file is under 1 KiB; a bigger one is not ours, and is not read (nor held in memory)."""


@dataclass(frozen=True)
class BackupMetadata:
    filename: str
    filesize: int
    """Bytes of the stored archive (.tar.gz, or .tar.gz.age when encrypted)."""
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
    """SHA-256 of the stored archive, hex, computed as it was written: downloads carry it (None in older
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
    stale: str | None = None
    """Why the member could not prove it current, for a stale backup (allow-stale-member); None: current."""
    drill: dict[str, Any] | None = None
    """The last restore drill of this backup: time, outcome, reason, seconds (worker.drill)."""
    recipients: list[str] | None = None
    """The public keys an encrypted backup (`...tar.gz.age`) was encrypted to; None: not encrypted. Never
    an identity: those are not the service's to record."""
    compacted_from: str | None = None
    """For a compacted backup (worker.compact): the backup it was made from, with the deltas after it; None: taken
    from etcd. Written (and signed) only when set, so that metadata written before it still reads and verifies."""
    compacted_revisions: list[int] | None = None
    """For a compacted backup: the first and last revision of the deltas applied to `compacted_from`."""
    signature: str | None = None
    """Ed25519 signature of everything above (signed_message), by the service's signing key (common.signing);
    None: taken without one."""

    def snapshot_revision(self) -> int | None:
        """The revision the snapshot holds, if known exactly (metadata older than revision_at_end: `revision`)."""
        return self.revision if self.revision_at_end in (None, self.revision) else None

    def started_at(self) -> datetime:
        """When the snapshot started, by the clock that named the backup (Redis'), UTC."""
        started = datetime.fromisoformat(self.started)
        if started.tzinfo is None:  # the worker writes UTC with its offset; one written without is taken as UTC
            started = started.replace(tzinfo=UTC)
        return started

    def completed(self, now: datetime) -> datetime:
        """When the backup was complete, by the clock that took it (not its name), and never later than `now`:
        a time in the future would keep a too-old alert from firing."""
        started = self.started_at()
        try:
            return min(started + timedelta(seconds=self.duration), now)
        except OverflowError:  # a duration of centuries is not ours: as late as allowed, or as early as can be
            return now if self.duration > 0 else datetime.min.replace(tzinfo=UTC)

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict(): its deep copy was half the time of a 1,000-backup detail listing.
        return {field.name: value for field in fields(self)
                if (value := getattr(self, field.name)) is not None or field.name not in WRITTEN_WHEN_SET}

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=1).encode()

    def signed_message(self) -> bytes:
        """What the signature signs: every field but the signature, in one canonical spelling (JSON gives every
        value back exactly as written, so a reader rebuilds the same bytes)."""
        fields_ = self.to_json()
        del fields_["signature"]
        return SIGNED_CONTEXT + json.dumps(fields_, sort_keys=True, separators=(",", ":")).encode()


def parse_metadata(raw: bytes, name: str) -> BackupMetadata | None:
    """The metadata of backup `name` in `raw` (as to_bytes wrote it), or None if it is not that: whoever
    can write to the store can write there, and what is read goes into answers, headers and metrics."""
    try:
        metadata = BackupMetadata(**json.loads(raw))
    except (ValueError, TypeError, RecursionError):  # not JSON, not an object, unknown keys, nested too deep
        return None
    # JSON gives exact types (bool is no int here): one set lookup a field, a detail listing reads 1,000.
    if metadata.filename != name or any(type(getattr(metadata, key)) not in kinds for key, kinds in _KINDS.items()):
        return None
    return metadata if _values_fit(metadata) else None


def _started_in_named_second(started: datetime, name: str) -> bool:
    """Whether `started` falls in the second that backup `name` is named after: a backup's time is its name's
    (Redis' clock took both), and a `started` edited to another time must not move it, for --to-time, the
    status or the metrics."""
    named = backup_time(name)
    if started.tzinfo is None:  # the worker writes UTC with its offset; one written without is taken as UTC
        started = started.replace(tzinfo=UTC)
    return named is not None and named <= started < named + timedelta(seconds=1)


WRITTEN_WHEN_SET = frozenset({"compacted_from", "compacted_revisions"})
"""Fields added after signing was: left out when None, so that earlier metadata's signed message is unchanged (and
a service of before them still reads what this one writes of a backup taken from etcd)."""


_SHA256 = re.compile(r"[0-9a-f]{64}")
_HEADER_SAFE = re.compile(r"[\x20-\x7e]{0,200}")
"""Printable ASCII: etcd_version goes into a response header."""


def _json_types(kind: Any) -> frozenset[type]:
    """The types JSON may give a field annotated `kind` (the few kinds BackupMetadata uses)."""
    if isinstance(kind, types.UnionType):
        return frozenset().union(*(_json_types(member) for member in typing.get_args(kind)))
    if kind is float:
        return frozenset({int, float})
    return frozenset({typing.get_origin(kind) or kind})


_KINDS = {key: _json_types(kind) for key, kind in typing.get_type_hints(BackupMetadata).items()}


def _values_fit(metadata: BackupMetadata) -> bool:
    try:
        started = datetime.fromisoformat(metadata.started)
    except ValueError:
        return False
    return (_started_in_named_second(started, metadata.filename)
            and _SHA256.fullmatch(metadata.db_sha256) is not None
            and (metadata.archive_sha256 is None or _SHA256.fullmatch(metadata.archive_sha256) is not None)
            and _HEADER_SAFE.fullmatch(metadata.etcd_version) is not None
            and 0 <= metadata.duration <= MAX_DURATION
            and all(type(alarm) is str for alarm in metadata.alarms or ())
            and all(type(key) is str for key in metadata.recipients or ())
            and (metadata.signature is None or len(metadata.signature) < 200)
            and (metadata.recipients is not None) == metadata.filename.endswith(ENCRYPTED_SUFFIX)
            and _compaction_fits(metadata))


def _compaction_fits(metadata: BackupMetadata) -> bool:
    """A compacted backup's name and metadata say so together, with the range of deltas it applied to its base."""
    if metadata.compacted_from is None:
        return metadata.compacted_revisions is None and not is_compacted(metadata.filename)
    revisions = metadata.compacted_revisions
    return (is_compacted(metadata.filename) and backup_time(metadata.compacted_from) is not None
            and revisions is not None and len(revisions) == 2 and all(type(number) is int for number in revisions)
            and 0 < revisions[0] <= revisions[1] == metadata.revision == metadata.revision_at_end)
