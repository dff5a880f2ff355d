"""Private work directories for what extracts a backup's database (verify, the drill, a restore).

The extracted database holds every Secret of the cluster. Its directory is 0700 (mkdtemp's mode),
and locked (flock) for as long as its process uses it. A process killed outright (kill -9, the OOM
killer) cannot clean up: the next worker to start removes every such directory of its user in the temp
dir that no live process holds the lock of, and stops what still runs in it (a drill's etcd); the next
restore does so beside its data dir and in /dev/shm (where a point-in-time restore applies its deltas).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

logger = logging.getLogger(__name__)

DRILL_PREFIX = "etcd-backup-drill-"
VERIFY_PREFIX = "etcd-backup-verify-"
RESTORE_PREFIX = ".etcd-backup-restore-"
"""Beside the data dir a restore makes (same file system: the restored dir is renamed into place)."""
POINT_IN_TIME_PREFIX = "etcd-backup-pitr-"
"""In /dev/shm: the throwaway etcd of a point-in-time restore."""
SOCKET_PREFIX = "etcd-backup-socket-"
"""In /tmp: the short path to a throwaway etcd's socket (recovery.throwaway)."""
COMPACT_PREFIX = "etcd-backup-compact-"
"""worker.compact's: the base backup restored, its deltas applied, compacted and archived."""
PREFIXES = (DRILL_PREFIX, COMPACT_PREFIX, VERIFY_PREFIX, RESTORE_PREFIX, POINT_IN_TIME_PREFIX, SOCKET_PREFIX)
LOCK_NAME = ".in-use"
"""Held (flock) by the process using the directory; a directory without one is not ours to remove."""


@contextmanager
def private_workdir(prefix: str, base: Path | None = None) -> Iterator[Path]:
    """A new 0700 directory in `base` (the temp dir by default), locked while in use, removed afterwards: through
    the directory opened when it was made, as the sweep does (_remove_opened), never through its name again."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        directory = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        made = os.fstat(directory)
        if os.listdir(directory):  # swapped for another directory between mkdtemp and the open: not ours to empty
            os.close(directory)
            raise OSError(f"{path} is not the empty directory just made there: another user swapped it")
        try:
            lock = _create_locked(directory)
        except BaseException:
            _remove_opened(parent, path.name, directory, made)
            os.close(directory)
            raise
        try:
            yield path
        finally:
            _remove_opened(parent, path.name, directory, made)
            os.close(lock)
            os.close(directory)
    finally:
        os.close(parent)


def _create_locked(directory: int) -> int:
    """The lock file of the open `directory`, locked before it takes its name: a LOCK_NAME that no one holds is
    always one whose process died, never one about to be locked."""
    making = f"{LOCK_NAME}.new"
    lock = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=directory)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.rename(making, LOCK_NAME, src_dir_fd=directory, dst_dir_fd=directory)
    except BaseException:
        os.close(lock)
        raise
    return lock


def remove_abandoned_workdirs(base: Path | None = None) -> list[Path]:
    """Remove the work directories in `base` (the temp dir by default) whose process died; return them."""
    removed = []
    base = base or Path(tempfile.gettempdir())
    base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in os.listdir(base_fd):
            if name.startswith(PREFIXES) and _remove_if_abandoned(base_fd, name):
                logger.warning("removed %s, left by a verify, drill or restore whose process died", base / name)
                removed.append(base / name)
    finally:
        os.close(base_fd)
    return removed


def _remove_if_abandoned(base_fd: int, name: str) -> bool:
    """Remove the work dir `name` of `base_fd` if its process died; return whether it was one.

    All of it goes through the directory opened once, never through its name again: where other users may write
    the parent and it has no sticky bit (a data dir's parent may be such), they may rename, even swap (renameat2
    RENAME_EXCHANGE), root's directories at any moment, and the name would then be another directory of root's."""
    try:  # never a symlink, never anything but a directory (a FIFO would block an open without O_DIRECTORY)
        directory = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=base_fd)
    except OSError:  # gone meanwhile
        return False
    try:
        found = os.fstat(directory)
        if found.st_uid != os.getuid():  # another user's: that user's own workers clean theirs
            return False
        try:
            lock = os.open(LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
        except OSError:  # no lock file: not one we made
            return False
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live process uses it
                return False
            _kill_processes_in(found)
            _remove_opened(base_fd, name, directory, found)
        finally:
            os.close(lock)
        return True
    finally:
        os.close(directory)


def _remove_opened(base_fd: int, name: str, directory: int, found: os.stat_result) -> None:
    """Remove what the open `directory` holds, then the directory itself if `name` in `base_fd` still names it."""
    _remove_contents(directory)
    with suppress(OSError):  # renamed meanwhile: what is left is an empty directory (or another's lock file)
        now = os.stat(name, dir_fd=base_fd, follow_symlinks=False)
        if (now.st_dev, now.st_ino) == (found.st_dev, found.st_ino):
            os.rmdir(name, dir_fd=base_fd)  # were it swapped just now, rmdir removes no directory with files


def _remove_contents(directory: int) -> None:
    """Remove what the open `directory` holds, its lock file last: removal cut short leaves it to the next sweep."""
    for entry in sorted(os.scandir(directory), key=lambda entry: entry.name == LOCK_NAME):
        with suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.name, ignore_errors=True, dir_fd=directory)
            else:
                os.unlink(entry.name, dir_fd=directory)


def _kill_processes_in(directory: os.stat_result) -> None:
    """SIGKILL the processes whose working directory is `directory` (a drill's etcd runs there): that very directory,
    not whatever its path names now."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.stat(proc / "cwd")
            if (cwd.st_dev, cwd.st_ino) == (directory.st_dev, directory.st_ino):
                where = os.readlink(proc / "cwd")
                os.kill(int(proc.name), signal.SIGKILL)
                logger.warning("stopped process %s, left running in %s", proc.name, where)
        except OSError:  # gone, or not ours to look at
            continue
