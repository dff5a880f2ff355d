"""`etcd-backup [--config FILE]`: the whole service; `etcd-backup worker --config FILE`: a worker;
`etcd-backup scheduler --config FILE`: the backup schedule;
`etcd-backup prune --config FILE [--dry-run]`: apply rotate and retention now;
`etcd-backup config check --config FILE`: print the effective config, secrets masked;
`etcd-backup verify|restore|download|list ...`: recovery (cli/recovery.py)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

import yaml

from cli import recovery
from cli.startup import CONFIG_ENV, DEFAULT_CONFIG_PATH, exit_unless_shared_queue, start_up
from common import queue, retention
from common.clock import redis_clock
from common.config import Config, effective_config
from common.storage import open_store

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="etcd-backup", description="REST API backup service for etcd.")
    parser.add_argument(
        "command", nargs="?", choices=["serve", "worker", "scheduler", "prune"], default="serve",
        help="serve: the API and one worker (and the schedule, if any) in one process (default); worker: a "
             "backup worker only; scheduler: takes the config's schedule; prune: delete the backups that "
             "rotate and retention do not keep (as after each backup)",
    )
    parser.add_argument("--dry-run", action="store_true", help="prune: list what would go and why, delete nothing")
    add_config_option(parser)
    return parser.parse_args(argv)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE",
        help=f"YAML config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )


def config_command(argv: list[str]) -> None:
    """`etcd-backup config check`: load the config as every process does; print what it runs with."""
    parser = argparse.ArgumentParser(prog="etcd-backup config", description="Check the config file.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="print the effective config (defaults and environment applied, "
                                              "secrets masked); a bad config is one line and exit 2")
    add_config_option(check)
    args = parser.parse_args(argv)
    print(yaml.safe_dump(effective_config(start_up(args.config)), sort_keys=False), end="")


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments and arguments[0] in recovery.COMMANDS:
        recovery.main(arguments)
        return
    if arguments[:1] == ["config"]:
        config_command(arguments[1:])
        return
    args = parse_args(arguments)
    config = start_up(args.config)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # Each command imports only what it runs: a worker never loads gunicorn or Flask.
    if args.command == "prune":
        prune(config, dry_run=args.dry_run)
    elif args.command == "scheduler":
        exit_unless_shared_queue(config, "a scheduler runs apart from the API")
        if config.schedule is None and config.drill is None:
            # Idle rather than exit: a Procfile runner (foreman, honcho) stops every process when one ends.
            logging.getLogger("scheduler").warning("the config sets no schedule: idle until stopped")
            stop_signals = {signal.SIGTERM, signal.SIGINT}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            signal.sigwait(stop_signals)
            return
        from scheduler.cron import run_scheduler

        run_scheduler(config)
    elif args.command == "worker":
        exit_unless_shared_queue(config, "a worker runs apart from the API")
        from worker.runner import run_worker

        run_worker(config)
    else:
        from cli.allinone import AllInOneServer

        AllInOneServer(config).run()


def prune(config: Config, dry_run: bool) -> None:
    """Print each backup with the verdict and its reason, newest first; delete unless `dry_run`."""
    # The clock that names the backups (Redis'), not this host's: a clock behind would take new
    # backups for backups named in the future.
    now = redis_clock(queue.connect(config) if config.redis_url is not None else None)()
    store = open_store(config)
    if dry_run:
        decisions = retention.plan(store.list_backups(), now, config.rotate, config.retention)
    else:
        decisions = retention.prune(store, now, config.rotate, config.retention)
    for decision in decisions:
        verdict = "keep" if decision.keep else ("would delete" if dry_run else "deleted")
        print(f"{verdict:12} {decision.name}  {decision.reason}")
