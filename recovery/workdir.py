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
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
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
PREFIXES = (DRILL_PREFIX, VERIFY_PREFIX, RESTORE_PREFIX, POINT_IN_TIME_PREFIX, SOCKET_PREFIX)
LOCK_NAME = ".in-use"
"""Held (flock) by the process using the directory; a directory without one is not ours to remove."""


@contextmanager
def private_workdir(prefix: str, base: Path | None = None) -> Iterator[Path]:
    """A new 0700 directory in `base` (the temp dir by default), locked while in use, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        lock = _create_locked(path)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(lock)


def _create_locked(directory: Path) -> int:
    """The lock file of `directory`, locked before it takes its name: a LOCK_NAME that no one holds is always
    one whose process died, never one about to be locked."""
    making = directory / f"{LOCK_NAME}.new"
    lock = os.open(making, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.rename(making, directory / LOCK_NAME)
    except BaseException:
        os.close(lock)
        raise
    return lock


def remove_abandoned_workdirs(base: Path | None = None) -> list[Path]:
    """Remove the work directories in `base` (the temp dir by default) whose process died; return them."""
    removed = []
    base = base or Path(tempfile.gettempdir())
    for entry in base.iterdir():
        if not entry.name.startswith(PREFIXES):
            continue
        try:
            info = entry.lstat()
            # Never a symlink, never another user's (that user's own workers clean theirs).
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            lock = os.open(entry / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # gone meanwhile, or no lock file: not one we made
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live process uses it
            os.close(lock)
            continue
        try:
            _kill_processes_in(entry)
            shutil.rmtree(entry, ignore_errors=True)
        finally:
            os.close(lock)
        logger.warning("removed %s, left by a verify, drill or restore whose process died", entry)
        removed.append(entry)
    return removed


def _kill_processes_in(directory: Path) -> None:
    """SIGKILL the processes whose working directory is `directory` (a drill's etcd runs there)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if Path(os.readlink(proc / "cwd")) == directory:
                os.kill(int(proc.name), signal.SIGKILL)
                logger.warning("stopped process %s, left running in %s", proc.name, directory)
        except OSError:  # gone, or not ours to look at
            continue
