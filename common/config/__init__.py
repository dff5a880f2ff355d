"""The config file, read once into typed, immutable objects.

One job per module: `schema` (the settings and their defaults), `load` (reading the YAML file
strictly), `validate` (the rules of each key), `section` (the generic validator those rules use),
`durations` (Go's duration syntax), `files` (reading the files it names: regular, bounded),
`effective` (the settings written back, secrets masked), `errors` (the one-line ConfigError).
Nothing here exits the process or creates a directory: the processes do that at start-up
(common.startup).
"""

from common.config.durations import format_duration, parse_duration
from common.config.effective import effective_config
from common.config.errors import ConfigError, printable
from common.config.load import load_config
from common.config.schema import DEFAULT_BACKUP_DIR, Config, EtcdConfig, RetentionConfig, split_listen
from common.config.validate import API_TOKEN_ENV, REDIS_URL_ENV, next_fire, parse_config

__all__ = [
    "API_TOKEN_ENV", "DEFAULT_BACKUP_DIR", "REDIS_URL_ENV", "Config", "ConfigError", "EtcdConfig", "RetentionConfig",
    "effective_config", "format_duration", "load_config", "next_fire", "parse_config", "parse_duration", "printable",
    "split_listen",
]
