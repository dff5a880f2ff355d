"""`etcd-backup verify|restore|download|list`: the recovery commands. They need no config file: they work on a
backup file, an s3:// object, or talk to a running service's API. With the config (--config), they read the
service's store directly, with the service down: `restore --config C latest`, --to-revision, --to-time."""

from __future__ import annotations

import argparse
import contextvars
import io
import os
import shlex
import shutil
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cli.tree import Commands, add_command, add_config_option
from common import backups, present
from common.config import API_TOKEN_ENV, parse_duration
from common.deltas import MAX_REVISION
from common.phases import phase
from common.storage.interface import StorageError
from recovery.client import (
    BACKUP_PATH,
    CHUNK,
    DEFAULT_DEADLINE,
    NAME_FORM,
    Client,
    ClientError,
    UsageError,
    announced_sha256,
    check_given_name,
    one_line,
    shown,
)
from recovery.restore import Member, RestoreError, check_data_dir, restore, restore_workdir
from recovery.verify import (
    CannotDecrypt,
    CannotVerify,
    Extracted,
    Verified,
    VerifyError,
    expected_of,
    extract_archive,
    extract_file,
    verify_archive,
)
from recovery.workdir import VERIFY_PREFIX, private_workdir

if TYPE_CHECKING:
    from common.config import Config
    from common.storage import BackupStore
    from recovery.pitr import Plan

URL_ENV = "ETCD_BACKUP_URL"
IDENTITY_ENV = "ETCD_BACKUP_IDENTITY"
DEFAULT_URL = "http://127.0.0.1:8080"
LATEST = "latest"
S3_SCHEME = "s3://"
SOURCE_HELP = ("a .tar.gz (or .tar.gz.age), its URL on the service, or its s3://BUCKET/KEY; latest: the newest (with "
               "--config, read from the config's store; without, asked of the service at --url); a FILE may also be a "
               ".db (etcdctl snapshot save) or a .db.gz (the original etcd-backup)")
UNCHECKED_SIGNATURE = "(signature not checked: no --config)"
"""What an s3:// object read without the config is labelled with: there is no key to check its signature with."""
TIME_FORMS = "2026-12-07T00:21:57Z (UTC), 2026-12-07T00:21:57+01:00, or Unix seconds (1796602917)"


def service_options(default_url: str | None = DEFAULT_URL) -> argparse.ArgumentParser:
    """The options of a command that asks the service: --url, --token, --deadline (`default_url` None: --url
    has no default, for a command that may read the store instead)."""
    service = argparse.ArgumentParser(add_help=False, parents=[token_options()])
    default = os.environ.get(URL_ENV, default_url) if default_url is not None else None
    service.add_argument("--url", default=default,
                         help=f"the service (default: ${URL_ENV}, else {DEFAULT_URL})")
    return service


def source_options() -> argparse.ArgumentParser:
    """The service's options of verify and restore: --token and --deadline for a URL, and --url for `latest`
    without --config (no default here: a store's `latest` never asks a service)."""
    source = argparse.ArgumentParser(add_help=False, parents=[token_options()])
    source.add_argument("--url", default=None,
                        help=f"for latest without --config: the service to ask (default: ${URL_ENV}, else "
                             f"{DEFAULT_URL})")
    return source


def token_options() -> argparse.ArgumentParser:
    """--token and --deadline, for every command that may ask the service."""
    token = argparse.ArgumentParser(add_help=False)
    token.add_argument("--token", default=os.environ.get(API_TOKEN_ENV),
                       help=f"the service's token (default: ${API_TOKEN_ENV}): list and status need the "
                            "read-token, download and a URL given to verify or restore the download-token; the "
                            "api-token does all")
    token.add_argument("--deadline", type=duration, default=DEFAULT_DEADLINE, metavar="DURATION",
                       help="how long the command may take to get its answers from the service, e.g. 90s, 2h "
                            f"(default: {DEFAULT_DEADLINE / 3600:g}h)")
    return token


def identity_options() -> argparse.ArgumentParser:
    """--identity, for every command that may open an encrypted backup."""
    identity = argparse.ArgumentParser(add_help=False)
    identity.add_argument("--identity", type=Path, default=os.environ.get(IDENTITY_ENV), metavar="KEYFILE",
                          help="the age identity file (or OpenSSH private key) that opens an encrypted backup "
                               f"(.tar.gz.age) (default: ${IDENTITY_ENV})")
    return identity


def add_commands(commands: Commands) -> None:
    """Add verify, restore, download and list to the command tree."""
    service, identity = service_options(), identity_options()
    verify = add_command(
        commands, "verify", run, "check a backup: exit 0 if it is good, 1 if not, 3 if it cannot be checked here",
        "Checks gzip and tar, the one .db member, its SHA-256 trailer and the database itself (etcdctl\n"
        "snapshot status). Needs etcdctl (etcd 3.4, 3.5) or etcdutl (3.5+; etcd 3.6's etcdctl cannot) on the PATH.",
        ["etcd-backup verify snapshot-20261127_060000.tar.gz",
         "etcd-backup verify http://backup-host:8080/api/v1/backup/snapshot-20261127_060000.tar.gz",
         "etcd-backup verify snapshot-20261127_060000.tar.gz.age --identity ~/etcd-backup.key",
         "etcd-backup verify --config /etc/etcd-backup/config.yml latest",
         "etcd-backup verify s3://etcd-backups/prod/snapshot-20261127_060000.tar.gz"],
        config_option=False, parents=[source_options(), identity])
    verify.add_argument("source", metavar="FILE|URL|s3://BUCKET/KEY|latest", help=SOURCE_HELP)
    add_config_option(verify, " (for latest and s3://: the store, its credentials and signing keys)")
    verify.add_argument("--allow-unsigned", action="store_true",
                        help="with --config and a config with signing: take an unsigned backup too (one taken before "
                             "signing was configured; or planted)")

    restore_parser = add_command(
        commands, "restore", run, "verify a backup and restore it into a new etcd data dir",
        "Stop etcd on every member first. Restore the same backup on each member, each with its own --name\n"
        "and --initial-advertise-peer-urls, the same --initial-cluster and a new --initial-cluster-token.",
        ["etcd-backup restore snapshot-20261127_060000.tar.gz --data-dir /var/lib/etcd-restored \\\n"
         "      --name etcd0 --initial-cluster etcd0=http://10.0.0.1:2380 \\\n"
         "      --initial-advertise-peer-urls http://10.0.0.1:2380",
         "etcd-backup restore --config /etc/etcd-backup/config.yml latest --data-dir /var/lib/etcd-restored",
         "etcd-backup restore s3://etcd-backups/prod/snapshot-20261127_060000.tar.gz --data-dir ...",
         "etcd-backup restore --config /etc/etcd-backup/config.yml --to-revision 123456 --data-dir /var/lib/etcd-pitr",
         "etcd-backup restore --config /etc/etcd-backup/config.yml --to-time 2026-11-27T06:30:00Z --data-dir ..."],
        config_option=False, parents=[source_options(), identity])
    restore_parser.add_argument("source", metavar="FILE|URL|s3://BUCKET/KEY|latest", nargs="?", help=SOURCE_HELP)
    point = restore_parser.add_mutually_exclusive_group()
    point.add_argument("--to-revision", type=revision, metavar="R",
                       help="instead of FILE|URL: the newest full backup at or before R, then the deltas up to R "
                            "(needs --config: where the backups and deltas are)")
    # A string, read by `moment` when the command runs: argparse would refuse a bad one after its whole usage.
    point.add_argument("--to-time", metavar="TIME",
                       help=f"instead of FILE|URL: the state at TIME ({TIME_FORMS}): the newest revision the delta "
                            "watcher had received by then")
    add_config_option(restore_parser, " (for latest, s3://, --to-revision and --to-time)")
    restore_parser.add_argument("--etcd-bin", action="append", type=Path, metavar="ETCD",
                                help="with --to-revision/--to-time: an etcd binary to apply the deltas in (repeat it "
                                     "for several versions: the one of the backup's etcd version is taken); default: "
                                     "the config's etcd-bin, else etcd on the PATH")
    restore_parser.add_argument("--allow-unsigned", action="store_true",
                                help="with --config (latest, s3://, --to-revision/--to-time) and a config with "
                                     "signing: take unsigned backups and deltas too (those taken before signing was "
                                     "configured; or planted)")
    restore_parser.add_argument("--data-dir", required=True, type=Path, help="a new (or empty) directory")
    restore_parser.add_argument("--name", help="this member's name (etcd's --name)")
    restore_parser.add_argument("--initial-cluster", help="every member: name1=https://host1:2380,...")
    restore_parser.add_argument("--initial-advertise-peer-urls", help="this member's peer URL(s)")
    restore_parser.add_argument("--initial-cluster-token", help="a new token, unique to the restored cluster")

    download = add_command(
        commands, "download", run, "download a backup from the service (run it again to resume a cut one)",
        "Written as NAME.part, then given its name once its length and SHA-256 are right; 0600.",
        ["etcd-backup download latest --url http://backup-host:8080",
         "etcd-backup download snapshot-20261127_060000.tar.gz --verify --output-dir /srv/restore"],
        config_option=False, parents=[service, identity])
    download.add_argument("name", metavar="NAME|latest", help="a backup's name, or latest: the newest")
    download.add_argument("--output-dir", type=Path, default=Path("."), help="where to write it (default: here)")
    download.add_argument("--verify", action="store_true",
                          help="verify the backup (as `verify` does) before keeping it")

    add_command(
        commands, "list", run, "list the service's backups, oldest first",
        "On a terminal: a table (name, age, size, revision, drill). Otherwise (a pipe, a file): the\n"
        "names as the API's JSON list gives them, one a line, for scripts.",
        ["etcd-backup list --url http://backup-host:8080",
         "etcd-backup list | tail -1      # the newest backup's name"],
        config_option=False, parents=[service])


def parse_args(argv: list[str]) -> argparse.Namespace:
    """`argv` as the recovery commands alone take it (the whole tree is cli.main's)."""
    parser = argparse.ArgumentParser(prog="etcd-backup", description="Check, restore and fetch etcd backups.")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def revision(text: str) -> int:
    """An etcd revision: a positive int64."""
    number = int(text)  # ValueError: argparse's usage error (status 2)
    if not 0 < number <= MAX_REVISION:
        raise ValueError(text)
    return number


def moment(text: str) -> datetime:
    """An ISO 8601 time with its offset (or Z), or Unix seconds; UsageError (one line, with the forms it takes)
    for anything else. A time without a zone is refused, not guessed: read in some host's zone, it would restore
    another moment than the one meant."""
    if text.isascii() and text.replace(".", "", 1).isdigit():
        try:
            return datetime.fromtimestamp(float(text), UTC)
        except (OverflowError, OSError, ValueError):
            raise UsageError(f"--to-time {shown(text)}: not a time of this era; give {TIME_FORMS}") from None
    try:
        # RFC 3339 lets the T and the Z be written in lowercase; Python's reader takes uppercase only.
        parsed = datetime.fromisoformat(text.upper())
    except ValueError:
        raise UsageError(f"--to-time {shown(text)} is not a time: give {TIME_FORMS}") from None
    if parsed.tzinfo is None:
        raise UsageError(f"--to-time {shown(text)} has no zone, and a time without one is not guessed: give "
                         f"{parsed.isoformat()}Z for UTC, {parsed.isoformat()}+01:00, or Unix seconds "
                         f"({int(parsed.replace(tzinfo=UTC).timestamp())} if it is UTC)")
    return parsed


def duration(text: str) -> float:
    """A positive Go duration, in seconds."""
    seconds = parse_duration(text)  # ValueError: argparse's usage error (status 2)
    if seconds <= 0:
        raise ValueError(text)
    return seconds


def main(argv: list[str]) -> None:
    run(parse_args(argv))


def run(args: argparse.Namespace) -> None:
    """Run the recovery command `args` names; a failure is one line on stderr and its exit status."""
    # SIGTERM ends the command like Ctrl-C does, through the clean-ups: an extracted database (every
    # Secret) is never left in a temp dir.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if args.command == "list":
            client = Client(args.url, args.token, deadline=args.deadline)
            # A person gets a table; a script (a pipe, a file) the names, one a line, as it always did.
            if sys.stdout.isatty():
                print(backup_table(client.details(), datetime.now(UTC)))
            else:
                print("\n".join(client.list()))
        elif args.command == "download":
            _download(args)
        elif args.command == "verify":
            source = _resolve(args)
            with private_workdir(VERIFY_PREFIX) as work:
                print(f"{source.label}: {source.extract(work).read_by_etcd().report()}")
        elif args.to_revision is not None or args.to_time is not None:
            _restore_to_point(args)
        elif args.source == LATEST and args.config is not None:
            _restore_latest(args)
        else:
            _restore(args, _resolve(args))
    except UsageError as exc:
        _fail(args, exc, status=2)
    except CannotDecrypt as exc:  # encrypted, and no identity given opens it: the caller's to fix
        _fail(args, exc, status=1)
    except CannotVerify as exc:  # no verdict: a full disk here, a transfer cut short, no etcd tool
        _fail(args, exc, status=3)
    except (VerifyError, RestoreError, ClientError, StorageError) as exc:
        _fail(args, exc, status=1)
    except OSError as exc:  # this host's side (a full disk, a directory that cannot be written): no verdict
        _fail(args, f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", status=3)


def backup_table(entries: list[dict[str, Any]], now: datetime) -> str:
    """The backups `entries` (?detail=true, oldest first) as a table: name, age, size, revision, drill."""
    rows = [("NAME", "AGE", "SIZE", "REVISION", "ENCRYPTED", "DRILL")]
    for entry in entries:
        try:
            age = present.duration((now - datetime.fromisoformat(entry["started"])).total_seconds())
        except (KeyError, TypeError, ValueError):  # a backup without metadata (or not the service's answer)
            age = "?"
        drill = entry.get("drill")
        drilled = f"{drill.get('outcome')} {present.when(drill.get('time'))}" if isinstance(drill, dict) else "-"
        revision = entry.get("revision")
        rows.append((entry["filename"], age, present.size(entry.get("filesize")),
                     "-" if revision is None else str(revision),
                     "yes" if backups.is_encrypted(str(entry["filename"])) else "no", drilled))
    cells = [[one_line(str(cell), limit=80) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _fail(args: argparse.Namespace, cause: object, status: int) -> None:
    """One line on stderr, whatever the cause holds (a server's message may hold newlines, escapes)."""
    where = f" {args.source}" if getattr(args, "source", None) is not None else ""
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
                               check=lambda archive: verified.append(
                                   verify_archive(archive, work, identity_file=args.identity)))
    print(f"{path}: {verified[0].report()}")


@dataclass(frozen=True)
class Source:
    """A backup named on the command line, found: what the output calls it, and what checks it (all but etcd's own
    reading of its database, Extracted.read_by_etcd) and extracts its snapshot into a work dir."""

    label: str
    extract: Callable[[Path], Extracted]


def _resolve(args: argparse.Namespace) -> Source:
    """The backup `args.source` names: a URL on the service, an s3:// object, `latest` (of the config's store, or of
    the service), or a file."""
    source: str | None = args.source
    if source is None:
        raise UsageError("give the backup to restore (FILE|URL|s3://BUCKET/KEY|latest), or --to-revision or "
                         "--to-time with --config")
    if source == LATEST and args.config is not None:
        store, config = _open_config_store(args)
        from recovery.pitr import newest_backup

        name, metadata = newest_backup(store, datetime.now(UTC))
        return _stored(store, name, metadata, args.identity or config.identity_file)
    if source == LATEST:
        client = Client(args.url or os.environ.get(URL_ENV, DEFAULT_URL), args.token, deadline=args.deadline)
        name = client.resolve(LATEST)
        print(f"latest: {name}, the newest backup of {client.base_url}")
        return _from_url(args, f"{client.base_url}{BACKUP_PATH}/{name}")
    if source.startswith(S3_SCHEME):
        return _s3_object(args, source)
    if source.startswith(("http://", "https://")):
        return _from_url(args, source)

    def extract(work: Path) -> Extracted:
        # Checked when read (after the data dir): a mistyped name is no verdict on any backup (1 says one is bad).
        if not os.path.lexists(source):
            raise UsageError(f"no such file: {source}")
        # An operator's own file: the formats they may bring from elsewhere are taken too.
        return extract_file(Path(source), work, follow_symlinks=True, identity_file=args.identity,
                            older_formats=True)

    return Source(source, extract)


def _from_url(args: argparse.Namespace, url: str) -> Source:
    """A backup on the service, at its URL."""
    base, found, name = url.partition(f"{BACKUP_PATH}/")
    if not found:
        raise UsageError(f"not a backup's URL: expected <service>{BACKUP_PATH}/<name>")
    path = f"{BACKUP_PATH}/{check_given_name(name)}"

    def extract(work: Path) -> Extracted:
        with ExitStack() as stack:
            body = Client(base, args.token, deadline=args.deadline).open(path)
            # The SHA-256 the service announces (from the backup's metadata, signed when the service signs): bytes
            # replaced in the store, or on the way, are refused even when they make a good snapshot.
            announced = announced_sha256(body, path)
            archive: BinaryIO = stack.enter_context(io.BufferedReader(body, CHUNK))
            return extract_archive(archive, work, identity_file=args.identity,
                                   archive_sha256=announced[1] if announced is not None else None)

    return Source(url, extract)


def _stored(store: BackupStore, name: str, metadata: Any, identity_file: Path | None) -> Source:
    """Backup `name` of `store`, held to what its `metadata` records (size, SHA-256s; signed when the store is)."""

    def extract(work: Path) -> Extracted:
        opened = store.open(name)
        if opened is None:  # deleted (rotation) since it was listed, or never there
            raise VerifyError(f"{name} is not a backup in {store.where}")
        with opened.file as archive:
            return extract_archive(archive, work, expected_of(metadata), identity_file, backups.is_encrypted(name))

    return Source(f"{name} in {store.where}", extract)


def _open_config_store(args: argparse.Namespace, etcd_credentials: bool = False,
                       bucket: tuple[str, str] | None = None) -> tuple[BackupStore, Config]:
    """The store of the config `args.config` names, read directly (the service may be down); signed backups only
    when the config signs, unless --allow-unsigned. Without `etcd_credentials`, etcd's TLS files and password are
    not read: a restore host need not hold them to read the store. The config has --etcd-bin's binaries, if given
    (checked before the store is read). `bucket`: a bucket and prefix of S3 instead of the config's backup-dir,
    reached with the config's s3 settings."""
    from common.config.schema import S3Config
    from common.startup import read_config
    from common.storage import open_store

    config = _with_etcd_bin(args, read_config(args.config, etcd_credentials=etcd_credentials))
    if bucket is not None:
        config = replace(config, s3=replace(config.s3, bucket=bucket[0], prefix=bucket[1]) if config.s3 is not None
                         else S3Config(*bucket))
    store = open_store(config, allow_unsigned=args.allow_unsigned)
    store.check()  # a bucket that does not exist, credentials it refuses: said before anything else
    return store, config


def _s3_object(args: argparse.Namespace, url: str) -> Source:
    """s3://BUCKET/[PREFIX/]NAME, read directly: with --config, with its s3 settings (endpoint, region,
    credentials) and its signing keys; without, with boto3's default chain (AWS_* variables, AWS_ENDPOINT_URL,
    shared files, instance roles)."""
    from common.config.validate import S3_BUCKET

    bucket, _, key = url.removeprefix(S3_SCHEME).partition("/")
    prefix, _, name = key.rpartition("/")
    if not S3_BUCKET.fullmatch(bucket):
        raise UsageError(f"{shown(bucket)} is no S3 bucket name (3-63 lowercase letters, digits, . and -)")
    if not backups.is_backup_name(name):
        raise UsageError(f"{shown(key)} is not a backup's key: expected [PREFIX/]{NAME_FORM}")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        # S3 takes a key as written (a/../NAME is a key of its own; some stores answer 400), and a proxy that
        # normalizes paths would read another object than the one this line names.
        raise UsageError(f"{shown(key)} has an empty, . or .. path segment: the key is taken as written, so name it "
                         "without them")
    folder = f"{prefix}/" if prefix else ""
    store: BackupStore
    if args.config is None:
        from common.config.schema import S3Config
        from common.storage.s3 import S3Store

        store, identity_file = S3Store(S3Config(bucket, folder)), args.identity
        store.check()
    else:
        store, config = _open_config_store(args, bucket=(bucket, folder))
        identity_file = args.identity or config.identity_file
    if store.stat(name) is None:
        from common.storage import AuthenticatedStore

        if isinstance(store, AuthenticatedStore) and store.inner.stat(name) is not None:
            raise VerifyError(f"{name} in {store.where} is not signed by the config's signing key (nor is its "
                              "metadata): not this service's backup; --allow-unsigned takes it all the same")
        raise VerifyError(f"no backup {name} in {store.where}")
    source = _stored(store, name, store.read_metadata(name), identity_file)
    # Without the config there is no verify-key: whoever can write the bucket may have put this object there, and
    # the line that says it is good must not let the operator believe its signature was checked.
    return source if args.config is not None else replace(source, label=f"{source.label} {UNCHECKED_SIGNATURE}")


def _restore(args: argparse.Namespace, source: Source) -> None:
    if args.etcd_bin and args.config is None:  # a backup is restored by etcd's tool alone: no etcd is started
        raise UsageError("--etcd-bin is for --to-revision/--to-time and latest with --config (the etcd the deltas "
                         "are applied in)")
    member = Member(args.name, args.initial_cluster, args.initial_advertise_peer_urls, args.initial_cluster_token)
    data_dir = check_data_dir(args.data_dir)  # before downloading or verifying anything
    # The snapshot is extracted beside the data dir: same file system, and no second copy in /tmp.
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with restore_workdir(data_dir) as work:
        with phase("extract and check"):
            extracted = source.extract(work)
        # etcd's own reading of the database (snapshot status) runs beside its restore, which reads it too: the data
        # dir takes the restored data only once that reading has found it good.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-status") as beside:
            reading = beside.submit(contextvars.copy_context().run, extracted.read_by_etcd)  # phases: ours

            def report() -> None:
                print(f"{source.label}: {reading.result().report()}")

            try:
                restore(extracted.db_path, data_dir, member, before_rename=report,
                        announce=lambda command: print("running: " + shlex.join(command)))
            except RestoreError:
                report()  # a database etcd's reading refuses is a bad backup (VerifyError), whatever the tool said
                raise
    _next_steps(args, data_dir)


def _restore_latest(args: argparse.Namespace) -> None:
    """`restore --config C latest`: the newest state the config's store can give, the service up or down: the
    newest full backup, then the deltas after it to the newest revision stored (as --to-revision that revision)."""
    from recovery.pitr import identities_of, plan_latest

    store, config = _open_config_store(args, etcd_credentials=True)
    identity_file = args.identity or config.identity_file
    check_data_dir(args.data_dir)  # before reading a delta
    plan = plan_latest(store, datetime.now(UTC), identities_of(identity_file))
    reached = f"revision {plan.revision} ({present.when(plan.reached_at.isoformat() if plan.reached_at else None)})"
    if not plan.deltas:
        print(f"latest in {store.where}: {plan.backup}, {reached}")
        _restore(args, _stored(store, plan.backup, plan.metadata, identity_file))
        return
    print(f"latest in {store.where}: {plan.backup} (revision {plan.metadata.revision}), then "
          f"{present.count(len(plan.deltas), 'delta')} to {reached}")
    _restore_plan(args, config, store, plan, identity_file)


def _restore_to_point(args: argparse.Namespace) -> None:
    """Restore to a revision or a time, from the full backups and deltas of the config's store."""
    if args.source is not None:
        raise UsageError("give either a backup (FILE|URL|s3://BUCKET/KEY|latest) or --to-revision/--to-time, not "
                         "both")
    from recovery.pitr import Target, identities_of, newest_stored_revision, plan_restore

    to_time = moment(args.to_time) if args.to_time is not None else None  # a bad time before the store is read
    store, config = _open_config_store(args, etcd_credentials=True)
    identity_file = args.identity or config.identity_file
    check_data_dir(args.data_dir)
    now = datetime.now(UTC)
    plan = plan_restore(store, Target(args.to_revision, to_time), now, identities_of(identity_file))
    # When etcd had the revision restored (the watcher's receipt): a --to-time's state may be older than the time
    # asked (no write since, or a watcher that was down then), and the person on call sees by how much.
    at = f" ({present.when(plan.reached_at.isoformat())})" if plan.reached_at is not None else ""
    print(f"restoring to revision {plan.revision}{at}: {plan.backup} (revision {plan.metadata.revision}), then "
          f"{present.count(len(plan.deltas), 'delta')}")
    _restore_plan(args, config, store, plan, identity_file)
    if to_time is not None and plan.reached_at is not None and plan.reached_at < to_time \
            and plan.revision >= newest_stored_revision(store, now):
        reach = "the deltas reach" if plan.deltas else f"{plan.backup} (no delta after it) reaches"
        print(f"--to-time {args.to_time} is past the newest data: {reach} revision {plan.revision} "
              f"({present.when(plan.reached_at.isoformat())}); restored to it")


def _restore_plan(args: argparse.Namespace, config: Config, store: BackupStore, plan: Plan,
                  identity_file: Path | None) -> None:
    """Restore `plan` (a backup and the deltas after it) into --data-dir, the deltas applied in a throwaway etcd."""
    from recovery.pitr import restore_to

    data_dir = check_data_dir(args.data_dir)
    member = Member(args.name, args.initial_cluster, args.initial_advertise_peer_urls, args.initial_cluster_token)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with restore_workdir(data_dir) as work:
        restore_to(config, store, plan, data_dir, member, work, identity_file, say=print)
    print("leases are kept: keys that had a lease have it again (its ID, the TTL it was granted, counted from etcd's "
          "start), as etcd's snapshot restore keeps them")
    _next_steps(args, data_dir)


def _with_etcd_bin(args: argparse.Namespace, config: Config) -> Config:
    """`config` with --etcd-bin's etcd binaries, if given: the ones the deltas may be applied in."""
    if not getattr(args, "etcd_bin", None):
        return config
    for path in args.etcd_bin:
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UsageError(f"--etcd-bin {path}: not an executable file")
    return replace(config, etcd_bin=tuple(path.absolute() for path in args.etcd_bin))


def _next_steps(args: argparse.Namespace, data_dir: Path) -> None:
    etcd = shutil.which("etcd") or "etcd"
    print(f"""restored into {data_dir}. Next:
  - one member: start etcd on it, e.g.
      {etcd} --name {args.name or 'default'} --data-dir {data_dir} --listen-client-urls ... --advertise-client-urls ...
    and check it: ETCDCTL_API=3 etcdctl --endpoints ... endpoint status -w json   (its "revision": the restored
    one; etcd 3.4 shows it in JSON only)
  - a cluster: restore the same backup on every member, each with its own --name and
    --initial-advertise-peer-urls and the same --initial-cluster and --initial-cluster-token, then start them all
    with those same flags and --initial-cluster-state new.""")
