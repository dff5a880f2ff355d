"""What every etcd-backup process does before it serves: find and load the config, prepare backup-dir.

A process that cannot start says why in one line on stderr and exits 2; loading the config itself
(common.config) only raises, and creates nothing. Here, not in cli/: the API's gunicorn processes (api.wsgi,
api.gunicorn_conf) start up the same way and import nothing of the command line (tests/test_layers.py).
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from common.config import REDIS_URL_ENV, Config, ConfigError, load_config, printable
from common.storage import StorageError, open_store

CONFIG_ENV = "ETCD_BACKUP_CONFIG"
"""Environment variable with the config file's path, for processes started by gunicorn or a Procfile."""
DEFAULT_CONFIG_PATH = "/etc/etcd-backup/config.yml"


def start_up(config_path: str | None, etcd_credentials: bool = True) -> Config:
    """Load the config and prepare its backup-dir, for a process that cannot start without them."""
    return read_config(config_path, prepare=True, etcd_credentials=etcd_credentials)


def read_config(config_path: str | None, prepare: bool = False, etcd_credentials: bool = True) -> Config:
    """Load the config (`config_path`, else $ETCD_BACKUP_CONFIG, else the default path) and, with `prepare`,
    its backup-dir; exit 2 with one line if either cannot be. Without `prepare` nothing is created: for a
    command that only reads (status). Without `etcd_credentials`, etcd's TLS files and password are not read
    (a process that never connects to etcd)."""
    path = os.path.abspath(config_path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    try:
        config = load_config(path, etcd_credentials=etcd_credentials)
        if prepare:
            prepare_backup_dir(config)
    except ConfigError as exc:
        exit_with(f"bad config {printable(path)}: {exc}")
    return config


def prepare_backup_dir(config: Config) -> None:
    """Make the store that backup-dir names usable (common.storage: BackupStore.prepare); a store that
    cannot be is a bad backup-dir."""
    try:
        open_store(config).prepare()
    except StorageError as exc:
        raise ConfigError("backup-dir", str(exc)) from None


def exit_unless_shared_queue(config: Config, situation: str) -> None:
    """Exit 2 if `config` has no Redis: the embedded queue cannot link separate processes."""
    if config.redis_url is None:
        exit_with(f"redis-url: required when {situation} (set redis-url in the config or {REDIS_URL_ENV})")


def load_web_config() -> Config:
    """Start up an API process that runs apart from its workers (the Procfile's `web`: api.gunicorn_conf). It
    never connects to etcd (its /readyz reads what the workers report: common.etcd_seen), so it reads none of
    etcd's credentials: its container need not hold the etcd client key."""
    config = start_up(None, etcd_credentials=False)
    exit_unless_shared_queue(config, "the API runs apart from its workers")
    return config


def exit_with(problem: str) -> NoReturn:
    """Say why this process cannot start, in one line on stderr, and exit 2."""
    print(f"etcd-backup: {problem}", file=sys.stderr)
    raise SystemExit(2) from None
