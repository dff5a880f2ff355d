"""Write one snapshot as `snapshot-*.tar.gz`, streaming, atomically, never clobbering a name.

The archive is built by hand rather than with `tarfile`, which needs a seekable file object or the
whole member up front: here the member's size is known from etcd's first message, and its bytes
flow straight from the gRPC stream into gzip.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from isal import igzip

from common.backups import fsync_dir, member_name, temp_name
from worker.errors import SnapshotError

ISAL_MAX_LEVEL = 3
"""isal compresses levels 0-3 several times faster than zlib; higher levels fall back to zlib."""


def write_archive(
    backup_dir: Path, name: str, started: datetime, member_size: int, chunks: Iterable[bytes], level: int, tag: str,
    before_publish: Callable[[int, str], object] = lambda size, sha256: None,
) -> int:
    """Write the archive `name` into `backup_dir`; return its size in bytes.

    `tag` goes into the temp file's name (common.backups.temp_name). `before_publish(size, sha256)` runs
    once the archive is complete and durable, just before it becomes visible (to write its metadata);
    `sha256` is the archive's, hex.

    The bytes go to a hidden temp file that is fsynced, then linked to `name` (link, unlike rename,
    fails instead of replacing an existing file), then removed. Whatever fails, no temp file and no
    partial archive remain.
    """
    temp = backup_dir / temp_name(name, tag)
    # 0600: a snapshot holds every secret stored in etcd.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            hashing = _HashingWriter(raw)
            _write_tar_gz(hashing, name, started, member_size, chunks, level)
            raw.flush()
            os.fsync(raw.fileno())
            size = os.fstat(raw.fileno()).st_size
        before_publish(size, hashing.digest.hexdigest())
        os.link(temp, backup_dir / name)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(backup_dir)
    return size


class _HashingWriter:
    """The archive's file, hashing what gzip writes to it: clients check downloads against the archive's
    SHA-256, and hashing on the way costs no second read of the file."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _write_tar_gz(
    raw: _HashingWriter, name: str, started: datetime, member_size: int, chunks: Iterable[bytes], level: int
) -> None:
    opener = igzip.IGzipFile if level <= ISAL_MAX_LEVEL else gzip.GzipFile
    # filename= sets the name recorded in the gzip header (without ".gz"), not the temp file's.
    with opener(filename=name, mode="wb", compresslevel=level, fileobj=raw, mtime=int(started.timestamp())) as gz:
        gz.write(_tar_header(member_name(name), member_size, started))
        written = 0
        for chunk in chunks:
            gz.write(chunk)
            written += len(chunk)
        if written != member_size:
            raise SnapshotError(f"snapshot has {written} bytes, etcd announced {member_size}")
        gz.write(_tar_end(member_size))


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
