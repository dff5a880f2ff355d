"""Restore a verified snapshot into an etcd data dir with etcd's own tool (never a home-made writer)."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.phases import phase
from recovery.throwaway import SHORT_PATHS
from recovery.verify import etcd_tool, tool_environment
from recovery.workdir import RESTORE_PREFIX, private_workdir, remove_abandoned_workdirs


class RestoreError(Exception):
    """The restore was refused or failed; the message says why."""


@dataclass(frozen=True)
class Member:
    """The member being restored: the `etcdctl snapshot restore` flags of that name (None: etcd's default)."""

    name: str | None = None
    initial_cluster: str | None = None
    initial_advertise_peer_urls: str | None = None
    initial_cluster_token: str | None = None

    def flags(self) -> list[str]:
        pairs = [("--name", self.name), ("--initial-cluster", self.initial_cluster),
                 ("--initial-advertise-peer-urls", self.initial_advertise_peer_urls),
                 ("--initial-cluster-token", self.initial_cluster_token)]
        return [part for flag, value in pairs if value is not None for part in (flag, value)]


def restore_command(db_path: Path, data_dir: Path, member: Member) -> list[str]:
    return [*etcd_tool(), "snapshot", "restore", str(db_path), "--data-dir", str(data_dir), *member.flags()]


SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))
"""Kernel file systems: no etcd data dir belongs there."""
SHARED_MEMORY = Path("/dev/shm")
"""Under /dev, but a tmpfs like any other (memory: gone at reboot)."""


def check_data_dir(data_dir: Path) -> Path:
    """Return `data_dir` as an absolute path if a restore may create it; raise RestoreError if not.

    etcd's tool creates the data dir itself: it may not exist, or be an empty directory of its own
    (not a mount point, which cannot be removed and re-created, not a symlink to somewhere else).
    """
    path = Path(os.path.abspath(data_dir))
    resolved = path.resolve()
    for tree in SYSTEM_TREES:
        if SHARED_MEMORY in resolved.parents:  # a tmpfs, not the kernel's: point-in-time restore applies there
            break
        if resolved == tree or tree in resolved.parents:
            raise RestoreError(f"{path} is under {tree}, a kernel file system: not a place for an etcd data dir")
    if path.is_symlink():
        raise RestoreError(f"{path} is a symlink: give the directory it points to, or a new one")
    if not path.exists():
        return path
    if not path.is_dir():
        raise RestoreError(f"{path} exists and is not a directory: restore into a new dir")
    if os.path.ismount(path):
        raise RestoreError(f"{path} is a mount point, which etcd's tool cannot create: restore into a new "
                           f"directory inside it, e.g. {path / 'etcd'}")
    if any(path.iterdir()):
        raise RestoreError(f"{path} exists and is not empty: refusing to touch it (restore into a new dir)")
    return path


DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]
"""Before etcd's tool: the kernel kills it when the restore dies, kill -9 included. Left running, it would go on
writing the database into a work dir that the next restore removes. (setpriv, not a preexec_fn: Python code between
fork and exec, in a process with gRPC's threads, made etcdctl fail with gRPC's "epoll_wait error".)"""


@contextmanager
def restore_workdir(data_dir: Path) -> Iterator[Path]:
    """A private work dir beside `data_dir` (the same file system: no second copy of the database in /tmp), made
    once what restores killed outright left there, in /dev/shm (every Secret, in clear) and in /tmp is removed."""
    for base in (data_dir.parent, SHARED_MEMORY, SHORT_PATHS):
        if base.is_dir():
            remove_abandoned_workdirs(base)
    with private_workdir(RESTORE_PREFIX, data_dir.parent) as work:
        yield work


def restore(db_path: Path, data_dir: Path, member: Member,
            announce: Callable[[list[str]], object] = lambda command: None,
            before_rename: Callable[[], object] = lambda: None) -> list[str]:
    """Restore `db_path` (a snapshot with its SHA-256 trailer, which the tool checks) into `data_dir`.

    Refuses a data dir that check_data_dir refuses. etcd's tool restores into a staging dir of ours
    beside it, which is then renamed into place: rename(2) fails rather than replace a data dir that
    is not empty (another restore's, finished meanwhile), and a failed restore removes only its own
    staging dir, never a data dir it did not make. `announce(command)` runs just before the tool;
    `before_rename()` once the tool has restored, before the data dir takes its work: what it raises
    is raised, and the staging dir removed (a check that ran beside the tool refused the snapshot).
    Returns the command it ran.
    """
    data_dir = check_data_dir(data_dir)
    with private_workdir(RESTORE_PREFIX, data_dir.parent) as staging:
        staged = staging / "data"
        command = restore_command(db_path, staged, member)
        announce(command)
        with phase("etcd snapshot restore"):
            done = subprocess.run([*DIE_WITH_PARENT, *command], capture_output=True, text=True,
                                  env=tool_environment(), timeout=3600)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise RestoreError(f"{shlex.join(command)} failed: {reason}")
        with phase("wait for the checks beside it"):
            before_rename()
        try:
            os.rename(staged, data_dir)  # onto nothing or an empty dir; never onto a data dir with files
        except OSError as exc:
            raise RestoreError(f"{data_dir} could not take the restored data ({exc.strerror}): another restore "
                               "may have filled it meanwhile; nothing of it was touched") from None
    return command
