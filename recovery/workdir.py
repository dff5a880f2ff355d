"""Private work directories for what extracts a backup's database (verify, the drill).

The extracted database holds every Secret of the cluster. Its directory is 0700 (mkdtemp's mode),
and locked (flock) for as long as its process uses it. A process killed outright (kill -9, the OOM
killer) cannot clean up: the next worker to start removes every such directory of its user that no
live process holds the lock of, and stops what still runs in it (a drill's etcd).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

DRILL_PREFIX = "etcd-backup-drill-"
VERIFY_PREFIX = "etcd-backup-verify-"
LOCK_NAME = ".in-use"
"""Held (flock) by the process using the directory; a directory without one is not ours to remove."""


@contextmanager
def private_workdir(prefix: str) -> Iterator[Path]:
    """A new 0700 directory in the temp dir, locked while in use, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    lock = os.open(path / LOCK_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(lock)


MIN_AGE = 60.0
"""Seconds a work dir's lock file must have existed before it may be taken for abandoned: its maker
creates the file, then locks it; in between, the directory is new, not dead."""


def remove_abandoned_workdirs(base: Path | None = None, min_age: float = MIN_AGE) -> list[Path]:
    """Remove the work directories whose process died; return them."""
    removed = []
    base = base or Path(tempfile.gettempdir())
    for entry in base.iterdir():
        if not entry.name.startswith((DRILL_PREFIX, VERIFY_PREFIX)):
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
            if time.time() - os.fstat(lock).st_mtime < min_age:
                raise BlockingIOError  # just made: its process may not have locked it yet
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live process uses it
            os.close(lock)
            continue
        try:
            _kill_processes_in(entry)
            shutil.rmtree(entry, ignore_errors=True)
        finally:
            os.close(lock)
        logger.warning("removed %s, left by a verify or drill whose process died", entry)
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
