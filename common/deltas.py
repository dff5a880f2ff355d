"""Delta files: the etcd events between full backups, so that a restore can reach any revision in between.

A delta holds every event of the revisions `first`..`last`, whole revisions only (restore applies one Txn
per revision, so that the restored revisions line up with the original's). Its name says both revisions
and the times the first and last were seen, zero-padded so that name order is revision order:

    delta-<first, 19 digits>-<last, 19 digits>-<YYYYMMDD_HHMMSS>-<YYYYMMDD_HHMMSS>.bin.gz[.age]

The file is gzip (`.age`: then encrypted with age, as backups are) of:

    MAGIC, then the previous revision (8 bytes) and its fingerprint (32 bytes), then records, then the 32-byte
    SHA-256 of all that came before it

The previous revision is the one before the delta's first, as etcd gave it to the watcher (its fingerprint:
the SHA-256 of its events, see fingerprint()): a restore chains a delta after another only if that matches, so
deltas of two histories (etcd restored to an earlier revision, then written past the old deltas) never mix.

Each record is one revision: its number (8 bytes), when the watcher received it (8 bytes, Unix
microseconds), its event count (4 bytes), then each event: its kind (1 byte: PUT or DELETE), key length
(4 bytes), key, and for a PUT the value length (4 bytes) and value, then (version 3) the key's lease ID (8 bytes,
signed as etcd's; 0: none) and the TTL that lease was granted (8 bytes, seconds; 0: none, or unknown: the lease was
gone when the watcher asked). Big-endian throughout. Version 2 (MAGIC_2) has no lease fields: its puts read as
leaseless. Neither lease field is part of a revision's fingerprint, so that deltas of both versions chain.

Whatever reads a delta trusts nothing in it: whoever can write to the store can plant one. The SHA-256 detects
damage, not tampering (whoever edits a plain delta recomputes it). With `signing`, the name carries the stored bytes'
SHA-256 and the service's signature of both (common.storage.authenticated): no planted or edited delta is read.
Whatever its origin, a delta is read within bounds: its digest checked before any of it is used, then every record
walked and checked against its name and MAX_DELTA_EVENTS before any event is built; any mismatch is a DeltaError.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pyrage

from common import signing
from common.encryption import Identity, Recipient

if TYPE_CHECKING:  # etcd's protobufs (and gRPC) take a fifth of a second to load: a restore from a file reads no event
    from etcd3.etcdrpc import kv_pb2

MAGIC = b"etcd-backup delta 3\n"
"""What the watcher writes: version 3, with the lease of each put."""
MAGIC_2 = b"etcd-backup delta 2\n"
"""Version 2 (no leases): still read. Same length as MAGIC."""
PUT, DELETE = 0, 1
MAX_DELTA_BYTES = 8 << 20
"""The watcher writes a delta once the events it holds reach this size (or at every delta-period)."""
MAX_STORED_BYTES = 64 << 20
"""A stored delta (compressed, maybe encrypted) larger than this is not one of ours, and is not read."""
MAX_PLAIN_BYTES = 256 << 20
"""Bytes a delta may inflate to: one of ours is under MAX_DELTA_BYTES plus a revision (etcd takes requests of at
most a few MiB); more is a planted gzip bomb."""
MAX_REVISION = (1 << 63) - 1
"""etcd's revisions are int64."""
NAME_TIME = "%Y%m%d_%H%M%S"
DELTA_NAME = re.compile(r"delta-(\d{19})-(\d{19})-(\d{8}_\d{6})-(\d{8}_\d{6})"
                        r"(?:-([A-Za-z0-9_-]{43})-([A-Za-z0-9_-]{86}))?\.bin\.gz(\.age)?")
"""A delta's name; a signed one (common.signing) carries its stored bytes' SHA-256 and its signature too."""
SIGNED_CONTEXT = b"etcd-backup delta 1\n"
"""Begins what a delta's signature signs: no other object's signature (a backup's metadata) can pass for one."""
SHA256_SIZE = 32
_REVISION = struct.Struct(">QqI")
_KEY = struct.Struct(">BI")
_LENGTH = struct.Struct(">I")
_PREVIOUS = struct.Struct(">Q32s")
_LEASE = struct.Struct(">qq")


class DeltaError(Exception):
    """A delta file is not what its name says, or not intact; the message says how."""


@dataclass(frozen=True)
class Event:
    kind: int
    """PUT or DELETE."""
    key: bytes
    value: bytes = b""
    # Not compared, nor in the fingerprint: a version 2 delta does not record them, and its copy of a revision
    # is the same revision as a version 3 one.
    lease: int = field(default=0, compare=False)
    """The lease ID the key was put with (etcd's kv.lease; 0: none)."""
    lease_ttl: int = field(default=0, compare=False)
    """The TTL (seconds) `lease` was granted, as the watcher asked etcd; 0: no lease, or unknown (it was gone)."""


@dataclass(frozen=True)
class Revision:
    """The events of one etcd revision: one Txn on restore."""

    number: int
    seen: float
    """Unix time the watcher received it: what --to-time compares with (etcd records no time)."""
    events: tuple[Event, ...]


NO_FINGERPRINT = bytes(32)
"""The digest of a delta's previous revision when the watcher could not see it (etcd had compacted it)."""


@dataclass(frozen=True)
class Fingerprint:
    """One revision's events, as a digest: what tells two histories apart at the same revision."""

    revision: int
    digest: bytes

    def __str__(self) -> str:
        return f"{self.revision}:{self.digest.hex()}"


def event_from_watch(event: kv_pb2.Event) -> Event:
    """An event as etcd's watch gives it: what the watcher stores and what a restore compares with."""
    if event.type == event.DELETE:  # kv_pb2.Event.DELETE, through the event: etcd3 is not imported at run time
        return Event(DELETE, event.kv.key, event.kv.value)
    return Event(PUT, event.kv.key, event.kv.value, int(event.kv.lease))  # its TTL: the watcher asks etcd


def fingerprint(number: int, events: Sequence[Event]) -> Fingerprint:
    """The fingerprint of revision `number` holding `events` (in etcd's order; the time seen and the leases are not
    part of it: version 2's encoding, so that fingerprints of both versions agree)."""
    return Fingerprint(number, hashlib.sha256(_encode_revision(Revision(number, 0.0, tuple(events)))).digest())


def parse_fingerprint(text: str) -> Fingerprint | None:
    """The Fingerprint that str() wrote, or None if `text` is not one."""
    revision, _, digest = text.partition(":")
    if not revision.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", digest):
        return None
    return Fingerprint(int(revision), bytes.fromhex(digest))


@dataclass(frozen=True)
class Delta:
    previous: Fingerprint
    """The revision before the first, as etcd had it when the watcher started this delta."""
    revisions: list[Revision]


@dataclass(frozen=True, order=True)
class DeltaName:
    """What a delta's name says."""

    first: int
    last: int
    first_seen: datetime
    last_seen: datetime
    encrypted: bool
    # Not compared: names sort by what they say (a signed and an unsigned copy of the same revisions included).
    stored_sha256: bytes | None = field(default=None, compare=False)
    """The SHA-256 of the delta's stored bytes, in a signed name (None: unsigned)."""
    signature: bytes | None = field(default=None, compare=False)
    """The signing key's signature of signed_message() (common.signing), in a signed name."""

    def __str__(self) -> str:
        signed = ""
        if self.stored_sha256 is not None and self.signature is not None:
            signed = f"-{signing.encode(self.stored_sha256)}-{signing.encode(self.signature)}"
        return (f"delta-{self.first:019d}-{self.last:019d}-{self.first_seen.strftime(NAME_TIME)}-"
                f"{self.last_seen.strftime(NAME_TIME)}{signed}.bin.gz{'.age' if self.encrypted else ''}")

    def unsigned(self) -> DeltaName:
        return replace(self, stored_sha256=None, signature=None)

    def signed_message(self, stored_sha256: bytes) -> bytes:
        """What a delta's signature signs: its name's claims (revisions, times, encrypted) and its bytes' digest."""
        return SIGNED_CONTEXT + str(self.unsigned()).encode() + b"\n" + stored_sha256


def parse_delta_name(name: str) -> DeltaName | None:
    """What delta `name` says, or None if it is not a delta's name (or says the impossible)."""
    match = DELTA_NAME.fullmatch(name)
    if match is None:
        return None
    first, last = int(match[1]), int(match[2])
    try:
        first_seen, last_seen = _name_time(match[3]), _name_time(match[4])
    except ValueError:  # digits of no date, such as month 13
        return None
    if not 0 < first <= last <= MAX_REVISION or first_seen > last_seen:
        return None
    if match[5] is None:
        return DeltaName(first, last, first_seen, last_seen, match[7] is not None)
    stored_sha256, signature = signing.decode(match[5], 32), signing.decode(match[6], signing.SIGNATURE_BYTES)
    if stored_sha256 is None or signature is None:  # another spelling of the same bytes: not a name we write
        return None
    return DeltaName(first, last, first_seen, last_seen, match[7] is not None, stored_sha256, signature)


def _name_time(digits: str) -> datetime:
    """A name's YYYYMMDD_HHMMSS (NAME_TIME) as a UTC time; ValueError if it is no date. What strptime reads, at a
    tenth of its cost: the status, the page and the recovery window parse every stored delta's name (thousands)."""
    return datetime(int(digits[0:4]), int(digits[4:6]), int(digits[6:8]), int(digits[9:11]), int(digits[11:13]),
                    int(digits[13:15]), tzinfo=UTC)


def is_delta_name(name: str) -> bool:
    return parse_delta_name(name) is not None


def delta_name(revisions: Sequence[Revision], encrypted: bool) -> DeltaName:
    """The name of the delta that holds `revisions` (in order, at least one)."""
    def seen(revision: Revision) -> datetime:
        return datetime.fromtimestamp(revision.seen, UTC).replace(microsecond=0)

    return DeltaName(revisions[0].number, revisions[-1].number, seen(revisions[0]), seen(revisions[-1]), encrypted)


def encode_delta(previous: Fingerprint, revisions: Sequence[Revision], recipients: Sequence[Recipient] = ()) -> bytes:
    """The stored bytes of a delta holding `revisions` after `previous`; encrypted to `recipients` if any."""
    header = MAGIC + _PREVIOUS.pack(previous.revision, previous.digest)
    digest = hashlib.sha256(header)
    parts = [header]
    for revision in revisions:
        record = _encode_revision(revision, leases=True)
        digest.update(record)
        parts.append(record)
    parts.append(digest.digest())
    # Level 1: deltas are written every few seconds while etcd is busy; the watcher must keep up.
    compressed = gzip.compress(b"".join(parts), compresslevel=1, mtime=0)
    return pyrage.encrypt(compressed, list(recipients)) if recipients else compressed


def _encode_revision(revision: Revision, leases: bool = False) -> bytes:
    parts = [_REVISION.pack(revision.number, round(revision.seen * 1e6), len(revision.events))]
    for event in revision.events:
        parts.append(_KEY.pack(event.kind, len(event.key)))
        parts.append(event.key)
        if event.kind == PUT:
            parts.append(_LENGTH.pack(len(event.value)))
            parts.append(event.value)
            if leases:
                parts.append(_LEASE.pack(event.lease, event.lease_ttl))
    return b"".join(parts)


MAX_DELTA_EVENTS = 1 << 20
"""Events a delta may hold. The watcher writes a delta once the events it holds reach MAX_DELTA_BYTES, counting
16 bytes plus key and value for each (etcd's keys are never empty): before the watch response that takes it
there it held fewer than MAX_DELTA_BYTES / 17 (about 494,000). That response adds at most 1,000 revisions
(etcd's most in one response), each a Txn of at most 128 operations by default (--max-txn-ops): 128,000 puts;
the rest of the room (over 400,000) is for a range delete in it. More is not a delta of etcd-backup's. The bound
is on objects, not bytes: a Python event costs about 170 bytes, so a delta of 38 KiB that inflates to 22 MiB of
4 million tiny events would take 666 MiB (and 13 s) to build. Its records are walked and checked first,
building nothing, stopping at the first one out of bounds; only then are its events built (170 MiB at most)."""
_SKIPPED, _SKIPPED_DELETE = Event(PUT, b""), Event(DELETE, b"")
"""What _event gives for a put or a delete it checks without building it (the kind tells whether lease fields
follow)."""


def decode_delta(name: str, stored: bytes, identities: Sequence[Identity] = (), events: bool = True) -> Delta:
    """Delta `name` from its `stored` bytes, every revision checked (DeltaError if not), within bounds whatever it
    holds: its digest is checked, then its records are walked without building anything, each checked against its
    name and MAX_DELTA_EVENTS as it comes, before any is built. `events` False: each revision without its events
    (its number and the time it was seen: what planning a restore to a time needs), none built."""
    said = parse_delta_name(name)
    if said is None:
        raise DeltaError(f"{name!r} is not a delta's name")
    if len(stored) > MAX_STORED_BYTES:
        raise DeltaError(f"{name}: larger than {MAX_STORED_BYTES >> 20} MiB: not a delta of etcd-backup's")
    plain = _inflate(name, _decrypt(name, stored, identities) if said.encrypted else stored)
    leases = plain.startswith(MAGIC)
    if not (leases or plain.startswith(MAGIC_2)) or len(plain) < len(MAGIC) + _PREVIOUS.size + SHA256_SIZE:
        raise DeltaError(f"{name}: not a delta file of etcd-backup's")
    body, recorded = memoryview(plain)[:-SHA256_SIZE], plain[-SHA256_SIZE:]  # a view: the body is not copied
    if hashlib.sha256(body).digest() != recorded:
        raise DeltaError(f"{name}: its SHA-256 does not match its contents: damaged")
    previous, previous_digest = _PREVIOUS.unpack_from(body, len(MAGIC))
    records = body[len(MAGIC) + _PREVIOUS.size:]  # MAGIC and MAGIC_2 are the same length
    for _ in _records(name, records, said, leases, build=False):  # all checked, nothing kept
        pass
    revisions = list(_records(name, records, said, leases, build=events))
    if not revisions or revisions[-1].number != said.last:
        raise DeltaError(f"{name}: holds revisions other than its name says (it ends at "
                         f"{revisions[-1].number if revisions else 'none'}, not {said.last})")
    if previous != said.first - 1:
        raise DeltaError(f"{name}: says it follows revision {previous}, not {said.first - 1}")
    return Delta(Fingerprint(previous, previous_digest), revisions)


def _decrypt(name: str, stored: bytes, identities: Sequence[Identity]) -> bytes:
    if not identities:
        raise DeltaError(f"{name} is encrypted: give the identity that opens it (--identity, or the config's "
                         "encryption.identity-file)")
    try:
        return bytes(pyrage.decrypt(stored, list(identities)))
    except pyrage.DecryptError as exc:
        raise DeltaError(f"{name}: cannot be decrypted ({exc}): another recipient's, or damaged") from None


def _inflate(name: str, compressed: bytes) -> bytes:
    """`compressed`, one gzip member, inflated: no more than MAX_PLAIN_BYTES, nothing after it."""
    inflater = zlib.decompressobj(31)  # 31: the gzip format, its CRC-32 and length checked
    try:
        plain = inflater.decompress(compressed, MAX_PLAIN_BYTES)
    except zlib.error as exc:
        raise DeltaError(f"{name}: not intact gzip data ({exc})") from None
    if inflater.unconsumed_tail:
        raise DeltaError(f"{name}: inflates beyond {MAX_PLAIN_BYTES >> 20} MiB: not a delta of etcd-backup's")
    if not inflater.eof or inflater.unused_data:
        raise DeltaError(f"{name}: {'cut short' if not inflater.eof else 'has data after its end'}")
    return plain


def _records(name: str, data: memoryview, said: DeltaName, leases: bool = False,
             build: bool = True) -> Iterator[Revision]:
    """The revision records of `data`, each checked as it comes (in order after the one before, within the revisions
    `said` names, the events within MAX_DELTA_EVENTS): reading stops at the first that is not. `leases`: version 3's
    records, each put with its lease. `build` False: the events are checked, not built (each revision holds none)."""
    position, previous, total = 0, 0, 0
    try:
        while position < len(data):
            number, micros, count = _REVISION.unpack_from(data, position)
            position += _REVISION.size
            if previous == 0 and number != said.first:
                raise DeltaError(f"{name}: its first revision is {number}, not {said.first} as its name says")
            if number > said.last:
                raise DeltaError(f"{name}: holds revision {number}, past {said.last}, the last its name says")
            if not previous < number or count == 0:
                raise DeltaError(f"{name}: revision {number} after {previous}, with {count} events: out of order")
            total += count
            if total > MAX_DELTA_EVENTS:
                raise DeltaError(f"{name}: {total} events by revision {number}, more than the {MAX_DELTA_EVENTS} "
                                 "the watcher writes in one delta: not a delta of etcd-backup's")
            events = []
            for _ in range(count):
                event, position = _event(name, data, position, build)
                if leases and event.kind == PUT:
                    event, position = _with_lease(name, data, position, event, build)
                if build:
                    events.append(event)
            previous = number
            yield Revision(number, micros / 1e6, tuple(events))
    except struct.error:
        raise DeltaError(f"{name}: a record is cut short") from None


def _event(name: str, data: memoryview, position: int, build: bool = True) -> tuple[Event, int]:
    kind, key_length = _KEY.unpack_from(data, position)
    position += _KEY.size
    key = _take(name, data, position, key_length, build)
    position += key_length
    if kind == DELETE:
        return Event(DELETE, key) if build else _SKIPPED_DELETE, position
    if kind != PUT:
        raise DeltaError(f"{name}: an event of unknown kind {kind}")
    (value_length,) = _LENGTH.unpack_from(data, position)
    position += _LENGTH.size
    value = _take(name, data, position, value_length, build)
    return Event(PUT, key, value) if build else _SKIPPED, position + value_length


def _with_lease(name: str, data: memoryview, position: int, event: Event, build: bool = True) -> tuple[Event, int]:
    """`event`, a version 3 put, with the lease fields that follow it at `position` (checked; kept if `build`)."""
    lease, ttl = _LEASE.unpack_from(data, position)
    if ttl < 0 or (lease == 0 and ttl != 0):
        raise DeltaError(f"{name}: a put with lease {lease} granted for {ttl}s: not a delta of etcd-backup's")
    return (replace(event, lease=lease, lease_ttl=ttl) if build else event), position + _LEASE.size


def _take(name: str, data: memoryview, position: int, length: int, build: bool = True) -> bytes:
    if position + length > len(data):
        raise DeltaError(f"{name}: a record is cut short")
    return bytes(data[position:position + length]) if build else b""
