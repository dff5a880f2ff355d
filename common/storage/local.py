"""backup-dir on a file system (local disk or a mount that every worker and the API share).

Each backup is two files: `snapshot-YYYYMMDD_HHMMSS.tar.gz` and its metadata, the same name plus
`.json`. Both are written as hidden temp files, fsynced, then hard-linked into place: link, unlike
rename, fails instead of replacing a file that has the name. Metadata goes in first, so a listed
backup always has its metadata; a crash between the two links leaves metadata without its archive,
which remove_orphan_metadata takes away.

Anything in the directory may have been planted by whoever can write to it: files are opened with
O_NOFOLLOW and O_NONBLOCK and checked to be regular files before they are read or served.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from common.backups import METADATA_SUFFIX, in_time_order, is_backup_name, metadata_name, report_once
from common.deltas import MAX_STORED_BYTES, is_delta_name
from common.metadata import MAX_METADATA_BYTES, BackupMetadata, parse_metadata
from common.storage.interface import CatalogEntry, OpenedBackup, StorageError, StoredFile

logger = logging.getLogger(__name__)

# Temp files are hidden (leading dot) so that `ls` and globbing tools skip them too.
TEMP_PREFIX = ".snapshot-"
TEMP_SUFFIX = ".part"
UPDATE_PREFIX = ".update-"
"""Temp files of metadata updates (a drill's record); not a backup's, so never taken for a dead backup's."""
UPDATE_MAX_SECONDS = 60.0
"""An update writes a file of 1 KiB: one older than this was left by a process that died."""
PRIVATE_FILE = 0o600
"""A snapshot holds every secret stored in etcd."""
PRIVATE_DIR = 0o700
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""O_NOFOLLOW: a planted symlink (to /dev/zero, to another user's file) is never followed. O_NONBLOCK:
opening a planted FIFO does not wait for a writer; fstat() then tells it is no file."""


def temp_name(name: str, tag: str) -> str:
    """The hidden name under which file `name` is written by the writer tagged `tag`."""
    return f"{TEMP_PREFIX}{name.removeprefix('snapshot-')}.{tag}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def _temp_tag(name: str) -> str:
    return name.removesuffix(TEMP_SUFFIX).rsplit(".", 1)[-1]


class LocalStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.where = f"backup-dir {directory}"
        self._metadata_read: dict[str, tuple[tuple[int, int, int, int], BackupMetadata | None]] = {}
        """read_metadata's cache: each backup's metadata, by the identity of the file it was read from (inode,
        size, mtime and ctime: no write leaves all four as they were, and no one can set a ctime)."""

    def __repr__(self) -> str:
        return f"LocalStore({str(self.directory)!r})"

    def prepare(self) -> None:
        """Create backup-dir (0700) if it is missing; refuse one that this process cannot write, or that
        someone else could plant files in."""
        path = self.directory
        if path.exists() and not path.is_dir():
            raise StorageError(f"{path} is not a directory")
        try:
            path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc.strerror}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise StorageError(f"{path} is not writable")
        # Refused, not chmod-ed: files may already have been planted while it was open (a FIFO, a backup
        # named in the future), and it may be open on purpose (a tmpfs mount, a share): the operator decides.
        st = path.stat()
        if st.st_uid != os.geteuid():
            raise StorageError(f"{path} is owned by uid {st.st_uid}, not by this process' user "
                               f"(uid {os.geteuid()}): its owner could plant or remove backups")
        if st.st_mode & 0o022:
            raise StorageError(f"{path} is writable by group or others (mode {st.st_mode & 0o777:04o}): "
                               "anyone could plant files there; make it private (chmod 0700)")

    def check(self) -> None:
        if not os.access(self.directory, os.R_OK | os.X_OK) or not self.directory.is_dir():
            raise OSError(f"{self.directory} is not a readable directory")
        os.listdir(self.directory)

    def list_backups(self, now: datetime | None = None) -> list[str]:
        names = list(self._regular_files(is_backup_name, nonempty=True))
        # The timestamp is fixed-width, so name order is time order.
        return sorted(names) if now is None else in_time_order(names, now)

    def taken_names(self) -> set[str]:
        return {name for name in os.listdir(self.directory) if is_backup_name(name)}

    def catalog(self, now: datetime) -> list[CatalogEntry]:
        entries = []
        for name in self.list_backups(now):
            stored = self.stat(name)
            if stored is not None:  # None: deleted since the listing
                entries.append(CatalogEntry(name, stored, self.read_metadata(name)))
        # Only what this listing shows stays: the cache never outgrows backup-dir's backups.
        listed = {entry.name for entry in entries}
        for name in [name for name in self._metadata_read if name not in listed]:
            self._metadata_read.pop(name, None)
        return entries

    def stat(self, name: str) -> StoredFile | None:
        if not is_backup_name(name):  # also: a backup name cannot contain a path separator
            return None
        try:
            st = os.lstat(self.directory / name)
        except FileNotFoundError:
            return None
        return _stored_file(st) if stat.S_ISREG(st.st_mode) and st.st_size > 0 else None

    def open(self, name: str) -> OpenedBackup | None:
        if not is_backup_name(name):
            return None
        fd = self._open_regular(self.directory / name)
        if fd is None:
            return None
        stored = _stored_file(os.fstat(fd))
        if stored.size == 0:
            os.close(fd)
            return None
        return OpenedBackup(file=open(fd, "rb"), stored=stored)

    def download_url(self, name: str) -> str | None:
        return None

    def read_metadata(self, name: str) -> BackupMetadata | None:
        """The metadata of `name`, read again only when its file changed (listings read every backup's)."""
        path = self.directory / metadata_name(name)
        fd = self._open_regular(path)
        if fd is None:
            return None
        with open(fd, "rb") as file:
            st = os.fstat(fd)
            identity = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            cached = self._metadata_read.get(name)
            if cached is not None and cached[0] == identity:
                return cached[1]
            raw = file.read(MAX_METADATA_BYTES + 1)
        if len(raw) > MAX_METADATA_BYTES:
            report_once(path, f"skipped: larger than {MAX_METADATA_BYTES} bytes")
            metadata = None
        else:
            metadata = parse_metadata(raw, name)
            if metadata is None:
                report_once(path, "skipped: not backup metadata")
        self._metadata_read[name] = (identity, metadata)
        return metadata

    def update_metadata(self, metadata: BackupMetadata) -> None:
        # Not a backup's temp name: updates run without the backup lock, and a backup that starts meanwhile
        # removes every backup temp file but its own. Unique: two drills may record at once.
        temp = f"{UPDATE_PREFIX}{metadata.filename}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
        self.write_durably(metadata_name(metadata.filename), metadata.to_bytes(), temp, replace=True)

    @contextmanager
    def new_backup(self, name: str, tag: str) -> Iterator[LocalPendingBackup]:
        try:
            temp = self.directory / temp_name(name, tag)
            with open(os.open(temp, NEW_FILE_FLAGS, PRIVATE_FILE), "wb") as file:
                try:
                    yield LocalPendingBackup(self, name, tag, file)
                finally:
                    temp.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(self._describe(exc, name)) from None

    def delete(self, name: str) -> bool:
        if not is_backup_name(name):  # nothing else in backup-dir is ever deleted
            return False
        deleted = _remove_file(self.directory / name)
        _remove_file(self.directory / metadata_name(name))
        return deleted

    def remove_unpublished(self, live_tag: Callable[[], str | None]) -> list[str]:
        """A backup creates its temp file only while it holds the backup lock, so a temp file that exists
        now and is not tagged as the live holder of the lock, asked after the listing, is a dead backup's."""
        temp_files = list(self._regular_files(is_temp_name))
        live = live_tag()
        removed = [name for name in temp_files if _temp_tag(name) != live and _remove_file(self.directory / name)]
        for name in removed:
            logger.warning("removed %s, left by an interrupted backup", name)
        return removed + self._remove_old_updates()

    def _remove_old_updates(self) -> list[str]:
        """Temp files of metadata updates (update_metadata) old enough that no update still writes them."""
        removed = []
        for name in self._regular_files(lambda name: name.startswith(UPDATE_PREFIX) and name.endswith(TEMP_SUFFIX)):
            try:
                age = time.time() - os.lstat(self.directory / name).st_mtime
            except FileNotFoundError:
                continue
            if age > UPDATE_MAX_SECONDS and _remove_file(self.directory / name):
                removed.append(name)
        return removed

    def write_durably(self, name: str, data: bytes, temp_file: str, replace: bool = False) -> None:
        """Write file `name` via temp file `temp_file`: fsync, link into place (or, to `replace` an existing
        one, rename), fsync the directory."""
        temp = self.directory / temp_file
        try:
            with open(os.open(temp, NEW_FILE_FLAGS, PRIVATE_FILE), "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            if replace:
                os.replace(temp, self.directory / name)
            else:
                os.link(temp, self.directory / name)
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(self.directory)

    def put_delta(self, name: str, data: bytes) -> str:
        if not is_delta_name(name):
            raise StorageError(f"{name!r} is not a delta's name")
        # An update's temp name: one left by a killed watcher goes with remove_unpublished's old updates. A short
        # one: a signed delta's name is 219 characters, and a file name may have 255.
        try:
            self.write_durably(name, data, f"{UPDATE_PREFIX}delta.{uuid.uuid4().hex}{TEMP_SUFFIX}")
        except OSError as exc:
            raise StorageError(self._describe(exc, name)) from None
        return name

    def list_deltas(self) -> list[str]:
        return sorted(self._regular_files(is_delta_name, nonempty=True))

    def read_delta(self, name: str) -> bytes | None:
        if not is_delta_name(name):
            return None
        fd = self._open_regular(self.directory / name)
        if fd is None:
            return None
        with open(fd, "rb") as file:
            return file.read(MAX_STORED_BYTES + 1)

    def delete_delta(self, name: str) -> bool:
        return is_delta_name(name) and _remove_file(self.directory / name)

    def remove_orphan_metadata(self) -> list[str]:
        names = os.listdir(self.directory)
        present = set(names)
        orphans = [name for name in names if (archive := _archive_of(name)) is not None and archive not in present]
        return [name for name in orphans if _remove_file(self.directory / name)]

    def _regular_files(self, wanted: Callable[[str], bool], nonempty: bool = False) -> Iterator[str]:
        """The names in backup-dir that are `wanted` and name regular files, `nonempty` ones if asked (no
        backup is empty: a gzip stream alone has a header). Anything else is logged."""
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not wanted(entry.name):
                    continue
                # follow_symlinks=False: a symlink planted in the directory must never be served.
                if not entry.is_file(follow_symlinks=False):
                    report_once(self.directory / entry.name, "skipped: not a regular file")
                elif not nonempty or _holds_bytes(entry):
                    yield entry.name

    def _open_regular(self, path: Path) -> int | None:
        """A read-only descriptor of `path` if it is a regular file, else None (logged if something is there)."""
        try:
            fd = os.open(path, READ_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as exc:
            report_once(path, "skipped: a symlink" if exc.errno == errno.ELOOP else f"skipped: {exc.strerror}")
            return None
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
        os.close(fd)
        report_once(path, "skipped: not a regular file")
        return None

    def _read_small_file(self, path: Path, limit: int) -> bytes | None:
        """The bytes of regular file `path` if it has at most `limit` of them, else None (logged). A file that
        grows while it is read is still read no further than the limit."""
        fd = self._open_regular(path)
        if fd is None:
            return None
        with open(fd, "rb") as file:
            data = file.read(limit + 1)
        if len(data) > limit:
            report_once(path, f"skipped: larger than {limit} bytes")
            return None
        return data

    def _describe(self, exc: OSError, name: str) -> str:
        if exc.errno == errno.EEXIST:
            return f"{name} already exists in backup-dir; it was not overwritten"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{self.where} is full ({exc.strerror}); older backups were kept"
        return f"cannot write to {self.where}: {exc.strerror or exc}"


class LocalPendingBackup:
    def __init__(self, store: LocalStore, name: str, tag: str, file: BinaryIO) -> None:
        self.store, self.name, self.tag, self.file = store, name, tag, file

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    def publish(self, metadata: BackupMetadata) -> None:
        """Metadata first, then the archive (so a listed backup has its metadata); the metadata goes again
        if the archive cannot follow. The temp file goes when new_backup's context ends."""
        directory = self.store.directory
        self.file.flush()
        os.fsync(self.file.fileno())
        meta_name = metadata_name(self.name)
        self.store.write_durably(meta_name, metadata.to_bytes(), temp_name(meta_name, self.tag))
        try:
            os.link(directory / temp_name(self.name, self.tag), directory / self.name)
        except BaseException:
            _remove_file(directory / metadata_name(self.name))
            raise
        _fsync_dir(directory)


def _archive_of(name: str) -> str | None:
    """The backup whose metadata file `name` is, if it is one."""
    archive = name.removesuffix(METADATA_SUFFIX)
    return archive if archive != name and is_backup_name(archive) else None


def _holds_bytes(entry: os.DirEntry[str]) -> bool:
    try:
        empty = entry.stat(follow_symlinks=False).st_size == 0
    except FileNotFoundError:  # rotated away since the listing
        return False
    if empty:
        report_once(entry.path, "skipped: an empty file")
    return not empty


def _stored_file(st: os.stat_result) -> StoredFile:
    # As werkzeug's send_file makes a file's ETag, with the inode in place of the path's checksum.
    return StoredFile(size=st.st_size, modified=st.st_mtime, etag=f"{st.st_mtime}-{st.st_size}-{st.st_ino}")


def _remove_file(path: Path) -> bool:
    """Unlink `path`; return False if it was not there, or is a directory (logged and left alone).

    unlink() never opens or follows what it removes, so a FIFO or a symlink planted under the name
    goes like a file; a directory would make unlink() fail, and with it the rotation or the backup.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        report_once(path, "skipped: a directory")
        return False
    return True


def _fsync_dir(path: Path) -> None:
    """Make a link, rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
