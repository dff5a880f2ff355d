"""The command line's start-up: common.startup's, where the API's processes find it too (they import nothing of
cli/). Kept under this name for the commands and tests that import it from here."""

from common.startup import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    exit_unless_shared_queue,
    exit_with,
    load_web_config,
    prepare_backup_dir,
    read_config,
    start_up,
)

__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG_PATH", "exit_unless_shared_queue", "exit_with", "load_web_config",
           "prepare_backup_dir", "read_config", "start_up"]
