"""Write one snapshot as a `snapshot-*.tar.gz` archive, streaming.

The archive is built by hand rather than with `tarfile`, which needs a seekable file object or the
whole member up front: here the member's size is known from etcd's first message, and its bytes
flow straight from the gRPC stream into gzip.
"""

from __future__ import annotations

import gzip
import hashlib
import tarfile
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from isal import igzip

from common.backups import ENCRYPTED_SUFFIX, member_name
from common.encryption import encrypting, parse_recipient
from common.phases import Phases
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
                  level: int, recipients: Sequence[str] = (), phases: Phases | None = None) -> WrittenArchive:
    """Write the `.tar.gz` of archive `name` to `out`: one member, the `member_size` bytes of `chunks`;
    age-encrypted to `recipients` (public keys) if any are given (common.encryption).

    What `out` receives is hashed and counted on its way, which costs no second read of it. `phases` gets
    the time spent compressing, handing to the encryption, hashing the archive and writing it.
    """
    phases = Phases() if phases is None else phases
    counted = _CountingWriter(out, phases)
    opener = igzip.IGzipFile if level <= ISAL_MAX_LEVEL else gzip.GzipFile
    sealed = encrypting(counted, [parse_recipient(key) for key in recipients]) if recipients else nullcontext(counted)
    gzip_seconds = 0.0
    # filename= sets the name recorded in the gzip header (without ".gz", nor ".age"), not the temp file's.
    with sealed as sealing:
        # Below gzip, on this thread: the encryption's pipe, or the hashing and the store's write.
        sink = _TimedWriter(sealing, phases, "encrypt (handed to age)" if recipients else None)
        with opener(filename=name.removesuffix(ENCRYPTED_SUFFIX), mode="wb", compresslevel=level,
                    fileobj=sink, mtime=int(started.timestamp())) as gz:
            gz.write(_tar_header(member_name(name), member_size, started))
            written = 0
            for chunk in chunks:
                began = time.perf_counter()
                gz.write(chunk)
                gzip_seconds += time.perf_counter() - began
                written += len(chunk)
            if written != member_size:
                raise SnapshotError(f"snapshot has {written} bytes, etcd announced {member_size}")
            gz.write(_tar_end(member_size))
    phases.add("compress", gzip_seconds - sink.seconds)
    return WrittenArchive(size=counted.size, sha256=counted.digest.hexdigest())


class Writable(Protocol):
    def write(self, data: bytes) -> int: ...

    def flush(self) -> None: ...


class _TimedWriter:
    """Passes writes on to `out`, summing the time they take (and adding it to phase `name`, if given)."""

    def __init__(self, out: Writable, phases: Phases, name: str | None) -> None:
        self.out, self.phases, self.name = out, phases, name
        self.seconds = 0.0

    def write(self, data: bytes) -> int:
        began = time.perf_counter()
        try:
            return self.out.write(data)
        finally:
            seconds = time.perf_counter() - began
            self.seconds += seconds
            if self.name is not None:
                self.phases.add(self.name, seconds)

    def flush(self) -> None:
        self.out.flush()


class _CountingWriter:
    """Passes what gzip writes on to `out`, hashing and counting it."""

    def __init__(self, out: Writable, phases: Phases) -> None:
        self.out = out
        self.digest = hashlib.sha256()
        self.size = 0
        self.phases = phases

    def write(self, data: bytes) -> int:
        with self.phases("archive sha256"):
            self.digest.update(data)
        self.size += len(data)
        with self.phases("write (to the store)"):
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
