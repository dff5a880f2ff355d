"""`etcd-backup verify|restore|download|list`: the recovery commands. They need no config file:
they work on a backup file, or talk to a running service's API."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

from common.config import API_TOKEN_ENV
from recovery.client import Client, ClientError
from recovery.restore import Member, RestoreError, restore, restore_command
from recovery.verify import Verified, VerifyError, verify_archive

COMMANDS = ("verify", "restore", "download", "list")
URL_ENV = "ETCD_BACKUP_URL"
DEFAULT_URL = "http://127.0.0.1:8080"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="etcd-backup", description="Check, restore and fetch etcd backups.")
    commands = parser.add_subparsers(dest="command", required=True)
    token = argparse.ArgumentParser(add_help=False)
    token.add_argument("--token", default=os.environ.get(API_TOKEN_ENV),
                       help=f"the service's api-token (default: ${API_TOKEN_ENV})")
    service = argparse.ArgumentParser(add_help=False, parents=[token])
    service.add_argument("--url", default=os.environ.get(URL_ENV, DEFAULT_URL),
                         help=f"the service (default: ${URL_ENV}, else {DEFAULT_URL})")

    verify = commands.add_parser("verify", parents=[token], help="check a backup; exit 0 if good, 1 if not")
    verify.add_argument("source", metavar="FILE|URL", help="a .tar.gz, or its URL on the service")

    restore_parser = commands.add_parser("restore", parents=[token],
                                         help="verify a backup and restore it into a new etcd data dir")
    restore_parser.add_argument("source", metavar="FILE|URL")
    restore_parser.add_argument("--data-dir", required=True, type=Path, help="a new (or empty) directory")
    restore_parser.add_argument("--name", help="this member's name (etcd's --name)")
    restore_parser.add_argument("--initial-cluster", help="every member: name1=https://host1:2380,...")
    restore_parser.add_argument("--initial-advertise-peer-urls", help="this member's peer URL(s)")
    restore_parser.add_argument("--initial-cluster-token", help="a new token, unique to the restored cluster")

    download = commands.add_parser("download", parents=[service], help="download a backup (resumes a cut one)")
    download.add_argument("name", metavar="NAME|latest")
    download.add_argument("--output-dir", type=Path, default=Path("."))

    commands.add_parser("list", parents=[service], help="list the service's backups, oldest first")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        if args.command == "list":
            print("\n".join(Client(args.url, args.token).list()))
        elif args.command == "download":
            print(Client(args.url, args.token).download(args.name, args.output_dir))
        elif args.command == "verify":
            with tempfile.TemporaryDirectory(prefix="etcd-backup-verify-") as work:
                print(f"{args.source}: {_verify(args.source, args.token, Path(work)).report()}")
        else:
            _restore(args)
    except (VerifyError, RestoreError, ClientError) as exc:
        where = f" {args.source}" if "source" in args else ""
        sys.exit(f"etcd-backup {args.command}{where}: {exc}")  # status 1, the message on stderr


def _verify(source: str, token: str | None, work: Path) -> Verified:
    with ExitStack() as stack:
        archive: BinaryIO
        if source.startswith(("http://", "https://")):
            base, _, path = source.partition("/api/")
            archive = stack.enter_context(Client(base, token).open("/api/" + path))
        else:
            try:
                archive = stack.enter_context(open(source, "rb"))
            except OSError as exc:
                raise VerifyError(f"cannot read it: {exc.strerror}") from None
        return verify_archive(archive, work)


def _restore(args: argparse.Namespace) -> None:
    member = Member(args.name, args.initial_cluster, args.initial_advertise_peer_urls, args.initial_cluster_token)
    data_dir: Path = args.data_dir.absolute()
    if data_dir.exists() and any(data_dir.iterdir()):  # before downloading anything
        raise RestoreError(f"{data_dir} exists and is not empty: refusing to touch it (restore into a new dir)")
    # The snapshot is extracted beside the data dir: same file system, and no second copy in /tmp.
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".etcd-backup-restore-", dir=data_dir.parent) as work:
        verified = _verify(args.source, args.token, Path(work))
        print(f"{args.source}: {verified.report()}")
        print("running: " + " ".join(restore_command(verified.db_path, data_dir, member)))
        restore(verified.db_path, data_dir, member)
    etcd = shutil.which("etcd") or "etcd"
    print(f"""restored into {data_dir}. Next:
  - one member: start etcd on it, e.g.
      {etcd} --name {args.name or 'default'} --data-dir {data_dir} --listen-client-urls ... --advertise-client-urls ...
    and check it: ETCDCTL_API=3 etcdctl --endpoints ... endpoint status
  - a cluster: restore the same backup on every member, each with its own --name and
    --initial-advertise-peer-urls and the same --initial-cluster and --initial-cluster-token, then start them all
    with those same flags and --initial-cluster-state new.""")
