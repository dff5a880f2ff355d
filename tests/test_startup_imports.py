"""The recovery commands load only what they use (issue 26): `etcd-backup restore FILE` runs on a host in an
emergency, and its start-up is part of what a restore costs. A restore or verify of a backup file never loads the
queue's libraries (Redis' client, RQ, fakeredis), S3's (boto3), nor gRPC and etcd's protobufs; a point-in-time
restore from a local backup-dir needs gRPC (its throwaway etcd), still none of the others.

Each command is the installed console script in a process of its own, as an operator runs it, with Python's
import profiler on (PYTHONPROFILEIMPORTTIME): every module it imports, at start-up or later, is on its stderr."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cli import etcd_backup
from harness.files import write_config
from harness.in_process import Service

QUEUE_AND_S3 = ("redis", "rq", "fakeredis", "boto3", "botocore", "s3transfer")
"""Top-level packages of the queue (the service's processes) and of S3 (an s3:// backup-dir)."""
ETCD_CLIENT = ("grpc", "etcd3", "google.protobuf")
"""etcd's gRPC client: a point-in-time restore talks to its throwaway etcd with it; etcd's own tool restores a file."""


def imports_of(stderr: str) -> dict[str, list[str]]:
    """Each module in the import profile on `stderr`, with the chain of imports that loaded it (itself first)."""
    rows = []  # (depth, name), in the order imports finished: a module's own imports come before it
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            name = line.rsplit("|", 1)[1]
            rows.append(((len(name) - len(name.lstrip())) // 2, name.strip()))
    chains = {}
    for index, (depth, name) in enumerate(rows):
        chain, wanted = [name], depth - 1
        for later_depth, later in rows[index + 1:]:
            if later_depth == wanted:
                chain.append(later)
                wanted -= 1
        chains.setdefault(name, chain)
    return chains


def assert_none_of(packages: tuple[str, ...], *args: str) -> str:
    """Run `etcd-backup ARGS`; fail, saying what imported it, if it loaded a module of `packages`. Its stdout."""
    done = etcd_backup(*args, env={"PYTHONPROFILEIMPORTTIME": "1"}, timeout=120)
    chains = imports_of(done.stderr)
    assert chains, f"no import profile on stderr: {done.stderr[-2000:]}"
    # One line a package: the chain that loaded it (its own top module's, else its first module's).
    problems = [" <- ".join(chains.get(package) or next(chain for name, chain in chains.items()
                                                       if name.startswith(f"{package}.")))
                for package in packages
                if package in chains or any(name.startswith(f"{package}.") for name in chains)]
    messages = "\n".join(line for line in done.stderr.splitlines() if not line.startswith("import time:"))
    assert done.returncode == 0, messages
    assert not problems, f"etcd-backup {' '.join(args)} loaded:\n" + "\n".join(problems)
    return done.stdout


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["restore", "--help"], ["verify", "--help"]],
                         ids=" ".join)
def test_help_and_version_load_no_client_library(args: list[str]) -> None:
    assert_none_of(QUEUE_AND_S3 + ETCD_CLIENT, *args)


def test_verify_and_restore_of_a_file_load_no_client_library(backup: Path, tmp_path: Path) -> None:
    shown = assert_none_of(QUEUE_AND_S3 + ETCD_CLIENT, "verify", str(backup))
    assert f"{backup}: good: revision" in shown, shown
    data_dir = tmp_path / "restored"
    assert_none_of(QUEUE_AND_S3 + ETCD_CLIENT, "restore", str(backup), "--data-dir", str(data_dir))
    assert (data_dir / "member" / "snap" / "db").is_file()


def test_a_point_in_time_restore_from_a_local_backup_dir_loads_neither_queue_nor_s3(
        service: Service, backup: Path, tmp_path: Path) -> None:
    """The service's backup-dir, in a config of the restore host's own: no redis-url (its check needs Redis'
    client, to read the URL as that client does)."""
    metadata = service.store.read_metadata(backup.name)
    assert metadata is not None and metadata.revision is not None
    config = write_config(tmp_path / "restore.yml", {"backup-dir": str(service.config.backup_dir),
                                                     "etcd": {"endpoints": list(service.config.etcd.endpoints)}})
    data_dir = tmp_path / "restored"
    shown = assert_none_of(QUEUE_AND_S3, "restore", "--config", str(config), "--to-revision",
                           str(metadata.revision), "--data-dir", str(data_dir))
    assert f"restoring to revision {metadata.revision}" in shown, shown
    assert (data_dir / "member" / "snap" / "db").is_file()
