"""Check a backup archive end to end, streaming: gzip and tar intact, exactly one `.db` member, its
32-byte SHA-256 trailer matching its data, and the bbolt database itself as etcd's own tool reads
it (`etcdutl snapshot status`, or `etcdctl snapshot status` with etcd 3.4, found on the PATH).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from isal import igzip, igzip_lib

TRAILER_SIZE = 32
CHUNK = 1 << 20
CORRUPT_DEFLATE: type[Exception] = igzip_lib.IsalError  # type: ignore[assignment]  # the stub says instance
"""What isal raises for deflate data that cannot be decompressed (not an OSError, unlike zlib's gzip)."""


class VerifyError(Exception):
    """The backup is bad; the message says how."""


@dataclass(frozen=True)
class Verified:
    db_path: Path
    """The extracted snapshot file (database + trailer), as `etcdctl snapshot restore` takes it."""
    db_size: int
    db_sha256: str
    revision: int
    total_keys: int
    total_size: int
    hash: int
    """etcd's own hash of the database (`snapshot status`)."""

    def report(self) -> str:
        return (f"good: revision {self.revision}, {self.total_keys} keys in the database, "
                f"{self.total_size} bytes, hash {self.hash:08x}, sha256 {self.db_sha256}")


def verify_archive(archive: BinaryIO, workdir: Path) -> Verified:
    """Check the archive read from `archive` and extract its snapshot into `workdir`."""
    try:
        gz = igzip.IGzipFile(fileobj=archive, mode="rb")  # type: ignore[no-untyped-call]
        with gz, tarfile.open(fileobj=gz, mode="r|") as tar:
            db_path, db_size, digest = _extract_single_db(tar, workdir)
    except (OSError, EOFError, tarfile.TarError, CORRUPT_DEFLATE) as exc:
        # igzip raises BadGzipFile (an OSError) for a bad header or CRC, EOFError when cut short,
        # IsalError for corrupt deflate data.
        raise VerifyError(f"not an intact .tar.gz: {exc}") from None
    status = snapshot_status(db_path)
    return Verified(db_path=db_path, db_size=db_size, db_sha256=digest, revision=int(status["revision"]),
                    total_keys=int(status["totalKey"]), total_size=int(status["totalSize"]),
                    hash=int(status["hash"]))


def verify_file(path: Path, workdir: Path) -> Verified:
    with open(path, "rb") as archive:
        return verify_archive(archive, workdir)


def _extract_single_db(tar: tarfile.TarFile, workdir: Path) -> tuple[Path, int, str]:
    members = iter(tar)
    member = next(members, None)
    if member is None:
        raise VerifyError("the archive is empty")
    if not member.isreg() or not member.name.endswith(".db") or "/" in member.name:
        raise VerifyError(f"expected one snapshot file (*.db), found {member.name!r}")
    if member.size < TRAILER_SIZE:
        raise VerifyError(f"{member.name} has {member.size} bytes: too short to hold a snapshot")
    source = tar.extractfile(member)
    assert source is not None
    db_path = workdir / member.name
    data_left = member.size - TRAILER_SIZE
    digest = hashlib.sha256()
    trailer = b""
    # 0600 whatever the umask: the snapshot holds every Secret. O_EXCL|O_NOFOLLOW: never written through
    # a file or symlink already at the name.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(db_path, flags, 0o600), "wb") as out:
        while chunk := source.read(CHUNK):
            out.write(chunk)
            data = chunk[:data_left]
            digest.update(data)
            data_left -= len(data)
            trailer += chunk[len(data):]
    if trailer != digest.digest():
        raise VerifyError(f"{member.name}: the SHA-256 trailer does not match the data: the snapshot is corrupt")
    extra = next(members, None)
    if extra is not None:
        raise VerifyError(f"expected one snapshot file, found another member {extra.name!r}")
    return db_path, member.size - TRAILER_SIZE, digest.hexdigest()


def etcd_tool() -> list[str]:
    """The command that reads and restores snapshots: etcdutl (etcd >= 3.5), else etcdctl (3.4)."""
    if etcdutl := shutil.which("etcdutl"):
        return [etcdutl]
    if etcdctl := shutil.which("etcdctl"):
        return [etcdctl]
    raise VerifyError("neither etcdutl nor etcdctl is on the PATH: install etcd's client tools")


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
