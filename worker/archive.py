"""Write one snapshot as a `snapshot-*.tar.gz` archive, streaming.

The archive is built by hand rather than with `tarfile`, which needs a seekable file object or the
whole member up front: here the member's size is known from etcd's first message, and its bytes
flow straight from the gRPC stream into gzip.
"""

from __future__ import annotations

import gzip
import hashlib
import tarfile
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from isal import igzip

from common.backups import ENCRYPTED_SUFFIX, member_name
from common.encryption import encrypting, parse_recipient
from worker.errors import SnapshotError

ISAL_MAX_LEVEL = 3
"""isal compresses levels 0-3 several times faster than zlib; higher levels fall back to zlib."""


@dataclass(frozen=True)
class WrittenArchive:
    size: int
    """Bytes of the stored archive (the .tar.gz, or the .tar.gz.age)."""
    sha256: str
    """The stored archive's SHA-256, hex: clients check downloads against it."""


def write_archive(out: Writable, name: str, started: datetime, member_size: int, chunks: Iterable[bytes],
                  level: int, recipients: Sequence[str] = ()) -> WrittenArchive:
    """Write the `.tar.gz` of archive `name` to `out`: one member, the `member_size` bytes of `chunks`;
    age-encrypted to `recipients` (public keys) if any are given (common.encryption).

    What `out` receives is hashed and counted on its way, which costs no second read of it.
    """
    counted = _CountingWriter(out)
    opener = igzip.IGzipFile if level <= ISAL_MAX_LEVEL else gzip.GzipFile
    sealed = encrypting(counted, [parse_recipient(key) for key in recipients]) if recipients else nullcontext(counted)
    # filename= sets the name recorded in the gzip header (without ".gz", nor ".age"), not the temp file's.
    with sealed as sink, opener(filename=name.removesuffix(ENCRYPTED_SUFFIX), mode="wb", compresslevel=level,
                                fileobj=sink, mtime=int(started.timestamp())) as gz:
        gz.write(_tar_header(member_name(name), member_size, started))
        written = 0
        for chunk in chunks:
            gz.write(chunk)
            written += len(chunk)
        if written != member_size:
            raise SnapshotError(f"snapshot has {written} bytes, etcd announced {member_size}")
        gz.write(_tar_end(member_size))
    return WrittenArchive(size=counted.size, sha256=counted.digest.hexdigest())


class Writable(Protocol):
    def write(self, data: bytes) -> int: ...

    def flush(self) -> None: ...


class _CountingWriter:
    """Passes what gzip writes on to `out`, hashing and counting it."""

    def __init__(self, out: Writable) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _tar_header(member: str, size: int, mtime: datetime) -> bytes:
    info = tarfile.TarInfo(member)
    info.size = size
    info.mode = 0o600
    info.mtime = int(mtime.timestamp())
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _tar_end(member_size: int) -> bytes:
    """Pad the member to a block, add the two zero end blocks, pad to a record, as tarfile does."""
    padding = -member_size % tarfile.BLOCKSIZE
    used = tarfile.BLOCKSIZE + member_size + padding + 2 * tarfile.BLOCKSIZE
    return tarfile.NUL * (padding + 2 * tarfile.BLOCKSIZE + (-used % tarfile.RECORDSIZE))
