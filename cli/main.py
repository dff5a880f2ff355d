"""`etcd-backup [--config FILE]`: the whole service; `etcd-backup worker --config FILE`: a worker."""

from __future__ import annotations

import argparse
import logging

from common.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, exit_unless_shared_queue, load_config_or_exit

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="etcd-backup", description="REST API backup service for etcd.")
    parser.add_argument(
        "command", nargs="?", choices=["serve", "worker"], default="serve",
        help="serve: the API and one worker in one process (default); worker: a backup worker only",
    )
    parser.add_argument(
        "--config", metavar="FILE",
        help=f"YAML config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = load_config_or_exit(args.config)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    # Each command imports only what it runs: a worker never loads gunicorn or Flask.
    if args.command == "worker":
        exit_unless_shared_queue(config, "a worker runs apart from the API")
        from worker.runner import run_worker

        run_worker(config)
    else:
        from cli.allinone import AllInOneServer

        AllInOneServer(config).run()
