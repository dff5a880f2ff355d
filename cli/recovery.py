"""`etcd-backup verify|restore|download|list`: the recovery commands. They need no config file:
they work on a backup file, or talk to a running service's API."""

from __future__ import annotations

import argparse
import io
import os
import shlex
import shutil
import signal
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

from common.config import API_TOKEN_ENV, parse_duration
from recovery.client import (
    BACKUP_PATH,
    CHUNK,
    DEFAULT_DEADLINE,
    Client,
    ClientError,
    UsageError,
    check_given_name,
    one_line,
)
from recovery.restore import Member, RestoreError, check_data_dir, restore
from recovery.verify import CannotVerify, Verified, VerifyError, verify_archive, verify_file
from recovery.workdir import VERIFY_PREFIX, private_workdir

COMMANDS = ("verify", "restore", "download", "list")
URL_ENV = "ETCD_BACKUP_URL"
DEFAULT_URL = "http://127.0.0.1:8080"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="etcd-backup", description="Check, restore and fetch etcd backups.")
    commands = parser.add_subparsers(dest="command", required=True)
    token = argparse.ArgumentParser(add_help=False)
    token.add_argument("--token", default=os.environ.get(API_TOKEN_ENV),
                       help=f"the service's api-token (default: ${API_TOKEN_ENV})")
    token.add_argument("--deadline", type=duration, default=DEFAULT_DEADLINE, metavar="DURATION",
                       help="how long the command may take to get its answers from the service, e.g. 90s, 2h "
                            f"(default: {DEFAULT_DEADLINE / 3600:g}h)")
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
    download.add_argument("--verify", action="store_true",
                          help="verify the backup (as `verify` does) before keeping it")

    commands.add_parser("list", parents=[service], help="list the service's backups, oldest first")
    return parser.parse_args(argv)


def duration(text: str) -> float:
    """A positive Go duration, in seconds."""
    seconds = parse_duration(text)  # ValueError: argparse's usage error (status 2)
    if seconds <= 0:
        raise ValueError(text)
    return seconds


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    # SIGTERM ends the command like Ctrl-C does, through the clean-ups: an extracted database (every
    # Secret) is never left in a temp dir.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if args.command == "list":
            print("\n".join(Client(args.url, args.token, deadline=args.deadline).list()))
        elif args.command == "download":
            _download(args)
        elif args.command == "verify":
            with private_workdir(VERIFY_PREFIX) as work:
                print(f"{args.source}: {_verify(args, work).report()}")
        else:
            _restore(args)
    except UsageError as exc:
        _fail(args, exc, status=2)
    except CannotVerify as exc:  # no verdict: a full disk here, a transfer cut short, no etcd tool
        _fail(args, exc, status=3)
    except (VerifyError, RestoreError, ClientError) as exc:
        _fail(args, exc, status=1)
    except OSError as exc:  # this host's side (a full disk, a directory that cannot be written): no verdict
        _fail(args, f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", status=3)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _fail(args: argparse.Namespace, cause: object, status: int) -> None:
    """One line on stderr, whatever the cause holds (a server's message may hold newlines, escapes)."""
    where = f" {args.source}" if "source" in args else ""
    message = one_line(f"etcd-backup {args.command}{where}: {cause}", limit=1000)
    if status == 1:
        sys.exit(message)  # status 1, the message on stderr
    print(message, file=sys.stderr)
    sys.exit(status)


def _download(args: argparse.Namespace) -> None:
    client = Client(args.url, args.token, deadline=args.deadline)
    progress = sys.stderr if sys.stderr.isatty() else None  # a bar in a log file is noise
    if not args.verify:
        print(client.download(args.name, args.output_dir, progress))
        return
    verified: list[Verified] = []
    with private_workdir(VERIFY_PREFIX) as work:
        path = client.download(args.name, args.output_dir, progress,
                               check=lambda archive: verified.append(verify_archive(archive, work)))
    print(f"{path}: {verified[0].report()}")


def _verify(args: argparse.Namespace, work: Path) -> Verified:
    source: str = args.source
    with ExitStack() as stack:
        archive: BinaryIO
        if source.startswith(("http://", "https://")):
            base, found, name = source.partition(f"{BACKUP_PATH}/")
            if not found:
                raise UsageError(f"not a backup's URL: expected <service>{BACKUP_PATH}/<name>")
            path = f"{BACKUP_PATH}/{check_given_name(name)}"
            body = Client(base, args.token, deadline=args.deadline).open(path)
            archive = stack.enter_context(io.BufferedReader(body, CHUNK))
        else:
            return verify_file(Path(source), work, follow_symlinks=True)
        return verify_archive(archive, work)


def _restore(args: argparse.Namespace) -> None:
    member = Member(args.name, args.initial_cluster, args.initial_advertise_peer_urls, args.initial_cluster_token)
    data_dir = check_data_dir(args.data_dir)  # before downloading or verifying anything
    # The snapshot is extracted beside the data dir: same file system, and no second copy in /tmp.
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".etcd-backup-restore-", dir=data_dir.parent) as work:
        verified = _verify(args, Path(work))
        print(f"{args.source}: {verified.report()}")
        restore(verified.db_path, data_dir, member, announce=lambda command: print("running: " + shlex.join(command)))
    etcd = shutil.which("etcd") or "etcd"
    print(f"""restored into {data_dir}. Next:
  - one member: start etcd on it, e.g.
      {etcd} --name {args.name or 'default'} --data-dir {data_dir} --listen-client-urls ... --advertise-client-urls ...
    and check it: ETCDCTL_API=3 etcdctl --endpoints ... endpoint status
  - a cluster: restore the same backup on every member, each with its own --name and
    --initial-advertise-peer-urls and the same --initial-cluster and --initial-cluster-token, then start them all
    with those same flags and --initial-cluster-state new.""")
