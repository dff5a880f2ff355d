"""Check a backup archive end to end, streaming, in flat memory: exactly one gzip member, intact; a tar
archive holding exactly one `.db` file; its 32-byte SHA-256 trailer matching its data (and the
digest and size the backup's metadata recorded, when there is metadata); and the bbolt database
itself as etcd's own tool reads it (`etcdutl snapshot status`, or `etcdctl snapshot status` with etcd
3.4 and 3.5, found on the PATH; etcd 3.6's etcdctl has no such command: etcdutl it is).

A backup may come from anyone who could write to backup-dir or sit between a client and the
service, so nothing it declares is trusted: the tar headers are parsed here, 512 bytes at a time,
never read whole (`tarfile` reads a long-name or PAX header of any declared size into memory); the
database may be no larger than etcd's own limit; gzip data is inflated a chunk at a time.

Three outcomes besides "good", with different exceptions, because an operator acts on them
differently: VerifyError (the backup is bad), CannotVerify (this host could not do the check: a
full disk, no etcdctl; nothing is known about the backup) and SourceUnreadable (the backup could
not be read to its end: a transfer cut short; try again).
"""

from __future__ import annotations

import contextvars
import hashlib
import io
import json
import os
import queue
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from isal import isal_zlib

from common import present
from common.backups import is_backup_name, is_encrypted
from common.encryption import (
    AGE_MAGIC,
    Identity,
    NotIntact,
    WrongIdentity,
    decrypting,
    parse_identities,
    shown_key_path,
)
from common.metadata import BackupMetadata
from common.phases import phase
from common.snapshot_format import TRAILER_SIZE, TrailerCheck
from common.storage import BackupStore
from recovery.bbolt import BadDatabase, user_keys

CHUNK = 1 << 20
BLOCK = 512
"""tar's block: headers are one block, data is padded to a multiple."""
MAX_DB_BYTES = 8 << 30
"""etcd's largest database (its --quota-backend-bytes maximum): a bigger member is no etcd snapshot."""
MAX_EXTENDED_HEADER = 4 << 10
"""A long-name or PAX header of more than this is refused: ours have none, Go's tar writes short ones."""
MAX_IDENTITY_FILE = 1 << 20
"""An identity file is a few lines; a bigger file is not one, and is not read whole."""
MAX_END_PADDING = 64 << 10
"""Zeros allowed after the tar's end (GNU tar pads to 10 KiB records)."""
MEMBER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.db")
"""The snapshot's name in the archive: a plain file name (no path, NUL, control character or 300
characters a file system would refuse), as etcd-backup and the original service write it."""
BBOLT_MAGIC = 0xED0CDAED
"""bbolt's magic number, in the meta page that opens every etcd database."""
BBOLT_META_PAGE = 0x04
BBOLT_PAGE_MULTIPLE = 512
"""A bbolt database is whole pages (4 KiB and up): its size a multiple of this, as etcd's tool checks."""
GZIP_WBITS = 31
"""zlib's window bits for the gzip format: header, deflate data, CRC-32 and length checked."""
CORRUPT_DEFLATE: type[Exception] = isal_zlib.error  # type: ignore[assignment]  # the stub says instance
"""What isal raises for gzip data that cannot be inflated or whose checks fail."""


class VerifyError(Exception):
    """The backup is bad; the message says how."""


class CannotVerify(Exception):
    """The check could not be done here (no space to extract, no etcd tool); says nothing of the backup."""


class SourceUnreadable(CannotVerify):
    """The backup could not be read to its end (a transfer cut short, a read error); try again."""


@dataclass(frozen=True)
class Expected:
    """What the backup's metadata recorded about its database (and its archive, when it recorded that): the
    check must find exactly that."""

    db_size: int
    db_sha256: str
    archive_size: int | None = None
    archive_sha256: str | None = None
    """The stored archive's bytes: with signed metadata (common.signing), what ties the archive to it."""


def expected_of(metadata: BackupMetadata | None) -> Expected | None:
    """What a backup's metadata says its database and archive are, for verify_archive to hold them to."""
    if metadata is None:
        return None
    return Expected(metadata.db_size, metadata.db_sha256, metadata.filesize, metadata.archive_sha256)


@dataclass(frozen=True)
class Verified:
    db_path: Path
    """The extracted snapshot file (database + trailer), as `etcdctl snapshot restore` takes it."""
    db_size: int
    db_sha256: str
    revision: int
    total_keys: int
    """etcd's `snapshot status` totalKey: every entry of the database, etcd's own and every revision kept."""
    total_size: int
    hash: int
    """etcd's own hash of the database (`snapshot status`)."""
    user_keys: int
    """The keys a client sees at `revision` (`etcdctl get "" --prefix`): recovery.bbolt."""

    def report(self) -> str:
        return (f"good: revision {self.revision}, {present.count(self.user_keys, 'user key')}, "
                f"{self.total_size} bytes, hash {self.hash:08x}, sha256 {self.db_sha256}")


@dataclass(frozen=True)
class Extracted:
    """A backup checked in every way but etcd's own reading of its database, which read_by_etcd() adds:
    a restore runs that reading beside etcd's restore (cli.recovery), which takes about as long."""

    db_path: Path
    db_size: int
    db_sha256: str

    def read_by_etcd(self) -> Verified:
        """The extracted snapshot as etcd's own tool reads it (VerifyError if it refuses it)."""
        with phase("etcd snapshot status"):
            status = snapshot_status(self.db_path)
        with phase("count the user keys"):
            try:
                keys = user_keys(self.db_path)
            except BadDatabase as exc:  # read by etcd's tool, yet its keys cannot be: damaged, or made to pass it
                raise VerifyError(f"its keys cannot be read: {exc}") from None
        return Verified(db_path=self.db_path, db_size=self.db_size, db_sha256=self.db_sha256,
                        revision=int(status["revision"]), total_keys=int(status["totalKey"]),
                        total_size=int(status["totalSize"]), hash=int(status["hash"]), user_keys=keys)


class CannotDecrypt(CannotVerify):
    """The backup is encrypted and no identity given opens it (or none was given): nothing is known of it."""


def load_identities(identity_file: Path | None) -> list[Identity]:
    """The identities in `identity_file` (an age identity file or an OpenSSH private key); CannotDecrypt
    if there is none or it cannot be read. The message never quotes the file: it is the private key."""
    if identity_file is None:
        raise CannotDecrypt("it is encrypted (age): give the identity that opens it (verify/restore --identity, "
                            "or the config's encryption.identity-file)")
    try:
        with open(identity_file, "rb") as file:
            text = file.read(MAX_IDENTITY_FILE + 1).decode()
        if len(text) > MAX_IDENTITY_FILE:
            raise ValueError("too big for an identity file")
        return parse_identities(text)
    except OSError as exc:
        raise CannotDecrypt(f"cannot read the identity file {shown_key_path(identity_file)}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        reason = "not text" if isinstance(exc, UnicodeDecodeError) else exc
        raise CannotDecrypt(f"the identity file {shown_key_path(identity_file)}: {reason}") from None


def verify_archive(archive: BinaryIO, workdir: Path, expected: Expected | None = None,
                   identity_file: Path | None = None, encrypted: bool | None = None,
                   older_formats: bool = False, archive_sha256: str | None = None) -> Verified:
    """Check the archive read from `archive` and extract its snapshot into `workdir` (extract_archive), then
    have etcd's own tool read the database (Extracted.read_by_etcd)."""
    return extract_archive(archive, workdir, expected, identity_file, encrypted, older_formats,
                           archive_sha256).read_by_etcd()


def extract_archive(archive: BinaryIO, workdir: Path, expected: Expected | None = None,
                    identity_file: Path | None = None, encrypted: bool | None = None,
                    older_formats: bool = False, archive_sha256: str | None = None) -> Extracted:
    """Check the archive read from `archive` and extract its snapshot into `workdir`. An age-encrypted one
    (common.encryption) is decrypted with the identities of `identity_file` as it is read; its age
    authentication is checked to the last byte. `encrypted`: what the backup's name says it is (a
    `.tar.gz.age` must be age, a `.tar.gz` must not); None for a file whose name says nothing. With
    `older_formats` (an operator's own file), a snapshot as `etcdctl snapshot save` writes it (`.db`) or
    gzip'd (`.db.gz`, what the original etcd-backup wrote) is taken too. The archive's bytes must have the SHA-256
    (and size) that `expected` records, or `archive_sha256` (what the service announced for a download)."""
    sha256 = expected.archive_sha256 if expected is not None and expected.archive_sha256 is not None else archive_sha256
    if sha256 is None:
        return _extract_archive(archive, workdir, expected, identity_file, encrypted, older_formats)
    hashed = _Hashed(archive)
    extracted = _extract_archive(hashed, workdir, expected, identity_file, encrypted, older_formats)
    hashed.check(expected.archive_size if expected is not None else None, sha256)
    return extracted


def _extract_archive(archive: _Readable, workdir: Path, expected: Expected | None, identity_file: Path | None,
                     encrypted: bool | None, older_formats: bool) -> Extracted:
    head = b""  # read whole: a network source may give a few bytes at a time
    while len(head) < len(AGE_MAGIC) and (more := _read_source(archive.read, len(AGE_MAGIC) - len(head))):
        head += more
    source = io.BufferedReader(_Unreliable(archive, head), CHUNK)
    is_age = head.startswith(AGE_MAGIC)
    if encrypted is not None and encrypted != is_age:
        # Whoever can write to the store put it there: a plaintext backup where an encrypted one belongs
        # is no backup of this service's, however good its snapshot.
        raise VerifyError("its name says it is encrypted (.tar.gz.age), but it is not age-encrypted" if encrypted
                          else "it is age-encrypted, but its name (.tar.gz) says it is not: it was not written so")
    if not is_age:
        if older_formats and _opens_like_bbolt(source.peek(BLOCK)):
            return Extracted(*_extract_raw_db(source, workdir))
        return _extract_gzip(source, workdir, expected, older_formats)
    identities = load_identities(identity_file)
    try:
        with decrypting(source, identities) as plaintext:
            return _extract_gzip(plaintext, workdir, expected, older_formats=False)
    except WrongIdentity as exc:
        raise CannotDecrypt(f"cannot decrypt it: {exc}") from None
    except NotIntact as exc:
        raise VerifyError(str(exc)) from None


class _Hashed:
    """`raw`, hashed as it is read: whoever replaced an archive and kept its metadata is found at its end."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.digest, self.size = raw, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        with phase("archive sha256 (within the read)"):
            self.digest.update(data)
        self.size += len(data)
        return data

    def check(self, size: int | None, sha256: str) -> None:
        """VerifyError unless the archive, read to its end, is `size` bytes with SHA-256 `sha256`."""
        while _read_source(self.read, CHUNK):  # the checks before stopped at the archive's end: nothing is left
            pass
        if (size is not None and self.size != size) or self.digest.hexdigest() != sha256:
            raise VerifyError(f"the archive ({self.size} bytes) is not the one its metadata records ({size} bytes, "
                              f"sha256 {sha256}): replaced or damaged after it was taken")


class _Unreliable(io.RawIOBase):
    """The archive's source (`head`, its first bytes, already read, then the rest), whose read errors are
    SourceUnreadable (a transfer cut short), not the backup's."""

    def __init__(self, raw: _Readable, head: bytes) -> None:
        self.raw, self.head = raw, head

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            data, self.head = self.head[:len(buffer)], self.head[len(buffer):]
        else:
            data = _read_source(self.raw.read, len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _extract_gzip(archive: BinaryIO, workdir: Path, expected: Expected | None, older_formats: bool) -> Extracted:
    """A .tar.gz holding one snapshot; with `older_formats`, also a gzip'd snapshot (.db.gz)."""
    stream = _OneGzipMember(archive)
    if older_formats and _opens_like_bbolt(stream.peek(BLOCK)):
        extracted = _extract_raw_db(stream, workdir)
    else:
        extracted = _extract_single_db(stream, workdir, expected)
    stream.check_ended()
    return Extracted(*extracted)


def verify_stored(store: BackupStore, name: str, workdir: Path, metadata: BackupMetadata | None,
                  identity_file: Path | None = None) -> Verified:
    """Check backup `name` of `store` against its `metadata` and extract its snapshot into `workdir`."""
    opened = store.open(name)
    if opened is None:  # rotated away since it was picked, or never there
        raise VerifyError(f"{name} is not a backup in {store.where}")
    with opened.file as archive:
        return verify_archive(archive, workdir, expected_of(metadata), identity_file, is_encrypted(name))


def verify_file(path: Path, workdir: Path, expected: Expected | None = None, follow_symlinks: bool = False,
                identity_file: Path | None = None, older_formats: bool = False) -> Verified:
    """Check the backup file at `path` (extract_file), then have etcd's own tool read its database."""
    return extract_file(path, workdir, expected, follow_symlinks, identity_file, older_formats).read_by_etcd()


def extract_file(path: Path, workdir: Path, expected: Expected | None = None, follow_symlinks: bool = False,
                 identity_file: Path | None = None, older_formats: bool = False) -> Extracted:
    """Check the backup file at `path` and extract its snapshot into `workdir`, as extract_archive does. In
    backup-dir a symlink is refused (someone put it there); an operator's own path (`follow_symlinks`) may be one."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        # O_NONBLOCK: a FIFO in the backup's place is refused below, never waited on.
        fd = os.open(path, flags)
    except OSError as exc:
        raise VerifyError(f"cannot open it: {exc.strerror}") from None
    with open(fd, "rb") as archive:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise VerifyError("it is not a regular file")
        # A backup's name is a promise of what it is; an operator's other name for a file is not.
        encrypted = is_encrypted(path.name) if is_backup_name(path.name) else None
        return extract_archive(archive, workdir, expected, identity_file, encrypted, older_formats)


class _OneGzipMember:
    """The inflated bytes of exactly one gzip member, a chunk at a time; what follows it is refused."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.inflater = isal_zlib.decompressobj(GZIP_WBITS)
        self.buffer = bytearray()

    def peek(self, size: int) -> bytes:
        """The next `size` bytes (fewer only where the member ends), left to read."""
        data = self.read(size)
        self.buffer[:0] = data
        return data

    def read(self, size: int) -> bytes:
        """Return `size` bytes, fewer only where the member ends."""
        if not self.buffer and size > 0:
            # The common case (the database, a chunk at a time): inflated straight into the answer, with none of
            # the buffer's three copies.
            inflated = self._inflate(size)
            if len(inflated) == size:
                return inflated
            self.buffer += inflated
        while len(self.buffer) < size and not self.inflater.eof:
            self.buffer += self._inflate(size - len(self.buffer))
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def _inflate(self, wanted: int) -> bytes:
        """At most `wanted` (> 0) more inflated bytes, maybe none yet; none at the member's end."""
        if self.inflater.eof:
            return b""
        compressed = self.inflater.unconsumed_tail or self.raw.read(CHUNK)
        if not compressed:
            raise VerifyError("not an intact .tar.gz: the compressed data ends before its end marker (truncated)")
        try:
            inflated: bytes = self.inflater.decompress(compressed, wanted)
        except CORRUPT_DEFLATE as exc:  # a bad header, bad deflate data, a wrong CRC-32 or length
            raise VerifyError(f"not an intact .tar.gz: {exc}") from None
        return inflated

    def check_ended(self) -> None:
        """After the tar's end: only zero padding, then the gzip member's end, then nothing."""
        padding = 0
        while chunk := self.read(CHUNK):
            padding += len(chunk)
            if chunk.count(0) != len(chunk) or padding > MAX_END_PADDING:
                raise VerifyError("unexpected data after the end of the tar archive")
        if self.inflater.unused_data or self.raw.read(1):
            raise VerifyError("more than one gzip member: data after the end of the archive")


def _read_source(read: Callable[[int], bytes], size: int) -> bytes:
    try:
        return read(size)
    except SourceUnreadable:
        raise
    except Exception as exc:  # noqa: BLE001 - a file's EIO, a socket's reset, the client's own error
        raise SourceUnreadable(f"could not read the backup to its end ({exc}); this says nothing about the "
                               "backup itself: try again") from None


def _extract_single_db(stream: _OneGzipMember, workdir: Path, expected: Expected | None) -> tuple[Path, int, str]:
    member = _next_member(stream)
    if member is None:
        raise VerifyError("the archive is empty")
    name, size = member
    if not MEMBER_NAME.fullmatch(name):
        raise VerifyError(f"expected one snapshot file (*.db), found {name[:100]!r}")
    if not TRAILER_SIZE <= size <= MAX_DB_BYTES + TRAILER_SIZE:
        raise VerifyError(f"{name} declares {size} bytes: no etcd snapshot has that size "
                          f"({TRAILER_SIZE} to {MAX_DB_BYTES + TRAILER_SIZE})")
    if expected is not None and size != expected.db_size + TRAILER_SIZE:
        raise VerifyError(f"{name} holds a {size - TRAILER_SIZE}-byte database, the backup's metadata recorded "
                          f"{expected.db_size}: this is not the snapshot that was taken")
    db_path = workdir / name
    check = TrailerCheck(size - TRAILER_SIZE)
    with _new_db_file(db_path, workdir) as out, _written_beside(out, workdir, check) as write:
        left = size
        while left:
            with phase("read, decrypt, inflate"):
                chunk = stream.read(min(CHUNK, left))
            if not chunk:
                raise VerifyError(f"not an intact .tar.gz: {name} ends {left} bytes early (truncated)")
            if left == size and not _opens_like_bbolt(chunk):  # before writing a byte of a fake
                raise VerifyError(f"{name} is not an etcd database: it does not open with bbolt's meta page")
            left -= len(chunk)
            write(chunk)
    stream.read(-size % BLOCK)  # the member's padding
    if not check.matches():
        raise VerifyError(f"{name}: the SHA-256 trailer does not match the data: the snapshot is corrupt")
    if expected is not None and check.sha256_hex() != expected.db_sha256:
        raise VerifyError(f"{name}: its SHA-256 is not the one the backup's metadata recorded: this is not the "
                          "snapshot that was taken")
    extra = _next_member(stream)
    if extra is not None:
        raise VerifyError(f"expected one snapshot file, found another member {extra[0][:100]!r}")
    return db_path, check.data_size, check.sha256_hex()


WRITE_AHEAD = 4
"""Inflated chunks (CHUNK each) waiting for the thread that writes and hashes them: 4 MiB at most."""


@contextmanager
def _written_beside(out: BinaryIO, workdir: Path, check: TrailerCheck) -> Iterator[Callable[[bytes], None]]:
    """A function that hands a chunk of the database to a thread of its own, which writes it to `out` and feeds
    it to `check`, while this one inflates the next: isal, hashlib and file writes release the GIL, so the two
    halves of an extraction (about a core each) overlap. When the block ends, every chunk has been written and
    hashed, or the first failure of the writing thread is raised (a write's: CannotVerify)."""
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=WRITE_AHEAD)
    failures: list[BaseException] = []

    def write_all() -> None:
        while (chunk := chunks.get()) is not None:
            if failures:
                continue  # drained until the end, so that the inflating side never waits on a full queue
            try:
                with _writing(workdir), phase("write the extracted database (beside)"):
                    out.write(chunk)
                with phase("snapshot sha256 (beside)"):
                    check.feed(chunk)
            except BaseException as exc:  # noqa: BLE001 - raised in the extracting thread
                failures.append(exc)

    def write(chunk: bytes) -> None:
        if failures:
            raise failures[0]
        chunks.put(chunk)

    thread = threading.Thread(target=contextvars.copy_context().run, args=(write_all,), name="db-writer",
                              daemon=True)
    thread.start()
    try:
        yield write
    finally:
        chunks.put(None)
        thread.join()
    if failures:
        raise failures[0]


RAW_SNAPSHOT_NAME = "snapshot.db"
"""What a .db or .db.gz is extracted as: it names no member."""


class _Readable(Protocol):
    def read(self, size: int) -> bytes: ...


def _extract_raw_db(stream: _Readable, workdir: Path) -> tuple[Path, int, str]:
    """A snapshot file as `etcdctl snapshot save` writes it (database, then its SHA-256): whatever the stream
    holds up to its end, the last 32 bytes taken for the trailer."""
    db_path = workdir / RAW_SNAPSHOT_NAME
    digest, data_size, held = hashlib.sha256(), 0, b""
    with _new_db_file(db_path, workdir) as out:
        while chunk := stream.read(CHUNK):
            data_size += len(chunk)
            if data_size > MAX_DB_BYTES + TRAILER_SIZE:
                raise VerifyError(f"over {MAX_DB_BYTES + TRAILER_SIZE} bytes: no etcd snapshot is that big")
            with _writing(workdir):
                out.write(chunk)
            held += chunk  # the trailer is the last 32 bytes: hash all but those
            digest.update(held[:-TRAILER_SIZE])
            held = held[-TRAILER_SIZE:]
    data_size -= TRAILER_SIZE
    if data_size % BBOLT_PAGE_MULTIPLE:
        raise VerifyError(f"{data_size + TRAILER_SIZE} bytes is no snapshot with a SHA-256 trailer (etcdctl "
                          "snapshot save writes one): a database copied from a data dir? etcd's tool restores "
                          "that only with --skip-hash-check")
    if held != digest.digest():
        raise VerifyError("the SHA-256 trailer does not match the data: the snapshot is corrupt")
    return db_path, data_size, digest.hexdigest()


@contextmanager
def _new_db_file(db_path: Path, workdir: Path) -> Iterator[BinaryIO]:
    """The extracted database: 0600 whatever the umask (it holds every Secret); O_EXCL|O_NOFOLLOW, never
    written through a file or symlink already at the name."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with _writing(workdir):
        out = os.fdopen(os.open(db_path, flags, 0o600), "wb")
    with out:
        yield out


def _opens_like_bbolt(data: bytes) -> bool:
    """Whether `data` starts with a bbolt meta page: its page flags, then the magic number. A database
    of zeros (a small archive inflating to gigabytes on disk) is refused before it is written."""
    return (len(data) >= 20 and int.from_bytes(data[8:10], "little") == BBOLT_META_PAGE
            and int.from_bytes(data[16:20], "little") == BBOLT_MAGIC)


def _next_member(stream: _OneGzipMember) -> tuple[str, int] | None:
    """The name and size of the next regular file in the tar stream, its data next to read; None at
    the archive's end."""
    long_name: str | None = None
    while True:
        block = stream.read(BLOCK)
        if len(block) < BLOCK:
            raise VerifyError("not an intact .tar.gz: the tar archive ends inside a header (truncated)")
        if block.count(0) == BLOCK:  # the end of the archive
            return None
        if _checksum(block) != _octal(block[148:156], "checksum"):
            raise VerifyError("not an intact .tar.gz: a tar header's checksum does not match")
        kind, size = block[156:157], _size(block[124:136])
        name = long_name or _header_name(block)
        if kind in (b"L", b"x", b"g"):  # a GNU long name, a PAX header: bounded, then the member it describes
            if size > MAX_EXTENDED_HEADER:
                raise VerifyError(f"a tar extended header of {size} bytes (at most {MAX_EXTENDED_HEADER}): "
                                  "no etcd-backup archive has one")
            data = stream.read(size)
            stream.read(-size % BLOCK)
            long_name = _extended_name(kind, data) or long_name
            continue
        if kind not in (b"0", b"\0"):
            raise VerifyError(f"expected one snapshot file (*.db), found {name[:100]!r} of tar type {kind!r}")
        return name, size


def _header_name(block: bytes) -> str:
    name = block[0:100].split(b"\0", 1)[0]
    if block[257:262] == b"ustar" and (prefix := block[345:500].split(b"\0", 1)[0]):
        name = prefix + b"/" + name
    return name.decode("utf-8", "replace")


def _extended_name(kind: bytes, data: bytes) -> str | None:
    if kind == b"L":
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")
    for record in data.split(b"\n"):  # PAX: "<length> <key>=<value>"
        _, _, pair = record.partition(b" ")
        key, _, value = pair.partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "replace")
    return None


def _size(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256, for members over 8 GiB
        return int.from_bytes(field[1:], "big")
    return _octal(field, "size")


def _octal(field: bytes, what: str) -> int:
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits or b"0", 8)
    except ValueError:
        raise VerifyError(f"not an intact .tar.gz: a tar header's {what} is not a number") from None


def _checksum(block: bytes) -> int:
    return sum(block[:148]) + 8 * 32 + sum(block[156:])


@contextmanager
def _writing(workdir: Path) -> Iterator[None]:
    """Around a write of the extracted database: a failure there is this host's, not the backup's."""
    try:
        yield
    except OSError as exc:
        raise CannotVerify(f"cannot write the extracted database in {workdir}: {exc.strerror or exc}; this says "
                           "nothing about the backup") from None


ETCDCTL_WITHOUT_SNAPSHOT_FILES = (3, 6)
"""From this etcdctl on, `snapshot status` and `snapshot restore` are gone (etcd 3.6 moved them to etcdutl)."""


def etcd_tool() -> list[str]:
    """The command that reads and restores snapshots: etcdutl (etcd >= 3.5), else etcdctl (3.4 and 3.5; 3.6's has
    no `snapshot status` or `snapshot restore` any more: CannotVerify naming etcdutl)."""
    if etcdutl := shutil.which("etcdutl"):
        return [etcdutl]
    if etcdctl := shutil.which("etcdctl"):
        version = _etcdctl_version(etcdctl)
        if version is not None and version >= ETCDCTL_WITHOUT_SNAPSHOT_FILES:
            raise CannotVerify(f"{etcdctl} is etcdctl {'.'.join(map(str, version))}, which has no `snapshot status` "
                               "or `snapshot restore` (etcd 3.6 moved them to etcdutl): put etcdutl on the PATH (it "
                               "comes with etcd's release, beside etcdctl)")
        return [etcdctl]
    raise CannotVerify("neither etcdutl nor etcdctl is on the PATH: install etcd's client tools (etcd 3.5 and later: "
                       "etcdutl)")


ETCDCTL_VERSION = re.compile(r"etcdctl version: (\d+)\.(\d+)")


def _etcdctl_version(etcdctl: str) -> tuple[int, int] | None:
    """etcdctl's major and minor version (`etcdctl version`), None if it does not say."""
    try:
        done = subprocess.run([etcdctl, "version"], capture_output=True, text=True, env=tool_environment(), timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None  # then it fails where it is used, with its own reason
    found = ETCDCTL_VERSION.search(done.stdout)
    return (int(found[1]), int(found[2])) if found else None


def tool_environment() -> dict[str, str]:
    return {**os.environ, "ETCDCTL_API": "3"}


def snapshot_status(db_path: Path) -> dict[str, int]:
    """etcd's own reading of the database: revision, total keys, size, hash."""
    command = [*etcd_tool(), "snapshot", "status", str(db_path), "--write-out", "json"]
    done = subprocess.run(command, capture_output=True, text=True, env=tool_environment(), timeout=600)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise VerifyError(f"{Path(command[0]).name} snapshot status refused the database: {reason}")
    status: dict[str, int] = json.loads(done.stdout)
    return status
