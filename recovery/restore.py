"""Restore a verified snapshot into an etcd data dir with etcd's own tool (never a home-made writer)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from recovery.verify import etcd_tool, tool_environment


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


def check_data_dir(data_dir: Path) -> Path:
    """Return `data_dir` as an absolute path if a restore may create it; raise RestoreError if not.

    etcd's tool creates the data dir itself: it may not exist, or be an empty directory of its own
    (not a mount point, which cannot be removed and re-created, not a symlink to somewhere else).
    """
    path = Path(os.path.abspath(data_dir))
    resolved = path.resolve()
    for tree in SYSTEM_TREES:
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


def restore(db_path: Path, data_dir: Path, member: Member) -> list[str]:
    """Restore `db_path` (a snapshot with its SHA-256 trailer, which the tool checks) into `data_dir`.

    Refuses a data dir that check_data_dir refuses; a restore that fails leaves no partial data dir
    (a rerun would refuse it). Returns the command it ran.
    """
    data_dir = check_data_dir(data_dir)
    if data_dir.exists():
        data_dir.rmdir()  # etcd's tool wants to create it
    command = restore_command(db_path, data_dir, member)
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=tool_environment(), timeout=3600)
    except BaseException:  # a timeout, a SIGTERM: what the tool wrote so far is of no use
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    if done.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RestoreError(f"{shlex.join(command)} failed: {reason}")
    return command
