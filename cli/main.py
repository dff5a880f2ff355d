"""`etcd-backup`: one command tree. `etcd-backup --help` lists every command; each has its own `--help`
with examples, and takes the options it reads.

The service's commands are here (serve, worker, scheduler, prune, config check); `status` is in
cli/status.py, the recovery commands (verify, restore, download, list) in cli/recovery.py.
`etcd-backup --config FILE` with no command starts the service, as the original etcd-backup did.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

import yaml

from cli import recovery
from cli import status as status_command
from cli.tree import EXIT_STATUSES, add_command
from common import present, retention
from common.config import Config, effective_config
from common.deltas import is_delta_name
from common.startup import exit_unless_shared_queue, exit_with, start_up
from common.storage import open_store

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

OVERVIEW = f"""\
examples:
  etcd-backup --config /etc/etcd-backup/config.yml     start the service (the same as `serve`)
  etcd-backup status --url http://backup-host:8080     how are the backups doing?
  etcd-backup list --url http://backup-host:8080       what can I restore?
  etcd-backup COMMAND --help                           a command's options and examples

{EXIT_STATUSES}"""


class InstalledVersion(argparse.Action):
    """--version: the installed package's version, looked up only when asked. importlib.metadata (and the csv,
    email and zipfile modules it loads) would cost every command's start-up tens of milliseconds."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="show program's version number and exit", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from importlib.metadata import version

        print(f"{parser.prog} {version('etcd-backup')}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree: each command's parser calls `set_defaults(run=...)` with what runs it."""
    parser = argparse.ArgumentParser(
        prog="etcd-backup", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="REST API backup service for etcd: takes, keeps, checks and restores etcd snapshots.",
        epilog=OVERVIEW)
    parser.add_argument("--version", action=InstalledVersion)
    # The original's one option: `etcd-backup --config FILE` (no command) starts the service.
    parser.add_argument("--config", dest="service_config", metavar="FILE",
                        help="with no command: start the service with this config (as `serve --config FILE`)")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    add_command(commands, "serve", serve, "run the API and one worker (and the schedule) in one process",
                "The default command: `etcd-backup --config FILE` runs it. Without Redis in the config, the\n"
                "queue is embedded in this process.",
                ["etcd-backup serve --config /etc/etcd-backup/config.yml",
                 "etcd-backup --config /etc/etcd-backup/config.yml"])
    add_command(commands, "worker", worker, "run a backup worker only (start as many as you like)",
                "Takes backups, verifies and drills from the Redis queue that redis-url names (required).",
                ["etcd-backup worker --config /etc/etcd-backup/config.yml",
                 "ETCD_BACKUP_CONFIG=/etc/etcd-backup/config.yml etcd-backup worker"])
    add_command(commands, "scheduler", scheduler, "run the config's schedule and drill apart from the API",
                "Enqueues a backup at each tick of `schedule` and a restore drill at each tick of `drill`\n"
                "(idles if the config has neither). Two schedulers still give one backup per tick.",
                ["etcd-backup scheduler --config /etc/etcd-backup/config.yml"])
    add_command(commands, "deltas", deltas, "run the delta watcher: etcd's events between full backups",
                "Watches etcd from the newest full backup and stores its events as deltas every delta-period,\n"
                "for restore --to-revision/--to-time. One watcher writes at a time (a Redis lease): start two\n"
                "for availability.",
                ["etcd-backup deltas --config /etc/etcd-backup/config.yml"])
    add_command(commands, "standby", standby, "run the standby: compacted backups from the deltas, as they come",
                "Restores the newest backup into a throwaway etcd of its own, applies each delta as the watcher\n"
                "stores it, and stores a compacted backup every compact-after-revisions revisions: a restore to\n"
                "any revision then applies at most about that many. Reads the store alone, never etcd. One\n"
                "standby works at a time (a Redis lease).",
                ["etcd-backup standby --config /etc/etcd-backup/config.yml"])
    prune_parser = add_command(
        commands, "prune", prune_command, "delete the backups that rotate and retention do not keep, now",
        "As after each backup: prints each backup with `keep` or `deleted` and the reason, newest first.",
        ["etcd-backup prune --config /etc/etcd-backup/config.yml --dry-run",
         "etcd-backup prune --config /etc/etcd-backup/config.yml"])
    prune_parser.add_argument("--dry-run", action="store_true", help="list what would go and why, delete nothing")
    config_parser = add_command(commands, "config", None, "check the config file",
                                "Loads the config as every process does.", ["etcd-backup config check --config FILE"],
                                config_option=False)
    config_commands = config_parser.add_subparsers(dest="config_command", title="commands", metavar="COMMAND",
                                                   required=True)
    add_command(config_commands, "check", config_check,
                "print the effective config (defaults and environment applied, secrets masked)",
                "A bad config is one line naming the key, and exit status 2.",
                ["etcd-backup config check --config /etc/etcd-backup/config.yml"])

    keygen_parser = add_command(
        commands, "keygen", keygen, "create the key pair that signs backups and deltas",
        "Writes the private key to --key-file (mode 0600; an existing file is never replaced) and prints the\n"
        "public key. Give the workers and the delta watcher signing.key-file, and every reader (the API,\n"
        "restore hosts) signing.verify-key: then only what this service stored is listed, drilled and restored.",
        ["etcd-backup keygen --key-file /etc/etcd-backup/signing.key"], config_option=False)
    keygen_parser.add_argument("--key-file", metavar="FILE", required=True, help="where to write the private key")
    status_command.add_commands(commands)
    recovery.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # Shell completion (`eval "$(register-python-argcomplete etcd-backup)"`): when the shell asks (it sets
    # _ARGCOMPLETE, which argcomplete checks first), this answers the completions and exits. argcomplete is
    # loaded only then: every other command would load it for nothing.
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:  # `etcd-backup [--config FILE]`: the service, as the original started it
        args.config, args.run = args.service_config, serve
    elif args.service_config is not None:  # `etcd-backup --config FILE worker`, as the flat parser took it
        if "config" not in args:
            parser.error(f"{args.command} takes no --config")
        args.config = args.config or args.service_config
    args.run(args)


def _service_config(args: argparse.Namespace) -> Config:
    """Load the config (exit 2 if it is bad) and start logging, for a command that serves or prunes."""
    config = start_up(args.config)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    return config


def _check_signing(config: Config) -> None:
    """For a process that stores backups or deltas: exit 2 if it cannot sign them when the config says they are
    signed; without signing, say once what that leaves open."""
    if config.signing is None:
        logging.getLogger("etcd-backup").warning(
            "no signing key (the config's signing section): whoever can write to %s can plant a backup or a delta "
            "that is listed, drilled and restored as if etcd held it; see docs/encryption.md (signing)",
            config.s3.url if config.s3 is not None else config.backup_dir)
    elif config.signing.key_file is None:
        exit_with("signing.key-file: required for a process that takes backups or stores deltas (what it stored "
                  "unsigned would be refused by every reader)")


# Each command imports only what it runs: a worker never loads gunicorn or Flask, and the recovery commands
# (cli.recovery) never load the queue's Redis client, RQ and fakeredis (common.queue), which take a quarter of
# a second to load: `etcd-backup restore` runs when every second counts (tests/test_startup_imports.py).


def serve(args: argparse.Namespace) -> None:
    config = _service_config(args)
    _check_signing(config)
    from cli.allinone import AllInOneServer

    AllInOneServer(config).run()


def worker(args: argparse.Namespace) -> None:
    config = _service_config(args)
    exit_unless_shared_queue(config, "a worker runs apart from the API")
    _check_signing(config)
    from worker.runner import run_worker

    run_worker(config)


def scheduler(args: argparse.Namespace) -> None:
    config = _service_config(args)
    exit_unless_shared_queue(config, "a scheduler runs apart from the API")
    from scheduler.cron import compacts, run_scheduler

    if config.schedule is None and config.drill is None and not compacts(config):
        # Idle rather than exit: a Procfile runner (foreman, honcho) stops every process when one ends.
        logging.getLogger("scheduler").warning("the config sets no schedule: idle until stopped")
        stop_signals = {signal.SIGTERM, signal.SIGINT}
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
        signal.sigwait(stop_signals)
        return
    run_scheduler(config)


def deltas(args: argparse.Namespace) -> None:
    config = _service_config(args)
    exit_unless_shared_queue(config, "the delta watcher runs apart from the API")
    _check_signing(config)
    from common import etcd_seen, queue
    from worker.deltas import run_watcher

    stop = _stop_on_signals()
    connection = queue.connect(config)
    etcd_seen.start_reporter(config.etcd, connection, "deltas")  # for the API's /readyz (common.etcd_seen)
    # Stored before it ends: the events received since the last delta.
    run_watcher(config, connection, stop)


def standby(args: argparse.Namespace) -> None:
    config = _service_config(args)
    exit_unless_shared_queue(config, "the standby runs apart from the API")
    _check_signing(config)
    from common import queue
    from worker.standby import run_standby

    run_standby(config, queue.connect(config), _stop_on_signals())


def _stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets: the loop that watches it ends cleanly (what it holds is stored first)."""
    stop = threading.Event()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, lambda signum, frame: stop.set())
    return stop


def keygen(args: argparse.Namespace) -> None:
    """Write a new signing key to --key-file (never over an existing file) and print its verify key."""
    from common.signing import new_signing_key

    private, verify_key = new_signing_key()
    try:
        fd = os.open(args.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        exit_with(f"keygen: cannot create {args.key_file}: {exc.strerror}")
    with open(fd, "w") as file:
        file.write(f"# etcd-backup signing key: keep it private; its verify key is {verify_key}\n{private}\n")
        file.flush()
        os.fsync(file.fileno())
    print(f"""wrote the signing key to {args.key_file}; the config of every process:
signing:
  verify-key: {verify_key}
  key-file: {os.path.abspath(args.key_file)}   # workers and the delta watcher only""")


def config_check(args: argparse.Namespace) -> None:
    """Load the config as every process does; print what it runs with."""
    print(yaml.safe_dump(effective_config(start_up(args.config)), sort_keys=False), end="")


def prune_command(args: argparse.Namespace) -> None:
    prune(_service_config(args), dry_run=args.dry_run)


def prune(config: Config, dry_run: bool) -> None:
    """Print each backup with the verdict and its reason, newest first; delete unless `dry_run`."""
    from common import queue
    from common.clock import redis_clock

    # The clock that names the backups (Redis'), not this host's: a clock behind would take new
    # backups for backups named in the future.
    now = redis_clock(queue.connect(config) if config.redis_url is not None else None)()
    store = open_store(config)
    if dry_run:
        decisions = retention.plan(store.list_backups(), now, config.rotate, config.retention)
        decisions += retention.plan_deltas(store, decisions, now)
    else:
        decisions = retention.prune(store, now, config.rotate, config.retention)
    # Kept deltas (thousands: one a delta-period) are summed up in one line; deleted ones are each shown.
    kept_deltas = [decision for decision in decisions if decision.keep and is_delta_name(decision.name)]
    for decision in decisions:
        if not (decision.keep and is_delta_name(decision.name)):
            verdict = "keep" if decision.keep else ("would delete" if dry_run else "deleted")
            print(f"{verdict:12} {decision.name}  {decision.reason}")
    if kept_deltas:
        print(f"{'keep':12} {present.count(len(kept_deltas), 'delta')}, {kept_deltas[0].name} to "
              f"{kept_deltas[-1].name}  {kept_deltas[0].reason}")
