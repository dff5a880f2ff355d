"""Restore a verified snapshot into an etcd data dir with etcd's own tool (never a home-made writer)."""

from __future__ import annotations

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


def restore(db_path: Path, data_dir: Path, member: Member) -> list[str]:
    """Restore `db_path` (a snapshot with its SHA-256 trailer, which the tool checks) into `data_dir`.

    Refuses a data dir that exists and is not empty; returns the command it ran.
    """
    if data_dir.exists():
        if not data_dir.is_dir() or any(data_dir.iterdir()):
            raise RestoreError(f"{data_dir} exists and is not empty: refusing to touch it (restore into a new dir)")
        data_dir.rmdir()  # etcd's tool wants to create it
    command = restore_command(db_path, data_dir, member)
    done = subprocess.run(command, capture_output=True, text=True, env=tool_environment(), timeout=3600)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RestoreError(f"{' '.join(command)} failed: {reason}")
    return command
