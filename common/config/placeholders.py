"""The placeholder that deploy/kubernetes/*/secret.yaml ships (REPLACE-ME) is never a value to run with:
every process refuses it at config load, wherever it was left: in a config value (inside redis-url's
password too), in an environment variable the service or boto3 reads, or as the content of a file the
config names (a Secret's `etcd-ca.pem: REPLACE-ME` mounts as a file holding just that). The value itself
is never quoted: around the placeholder may be a real secret."""

from __future__ import annotations

import os
from typing import Any

from common.config.errors import ConfigError

PLACEHOLDER = "REPLACE-ME"
ENVIRONMENT = ("REDIS_URL", "ETCD_BACKUP_API_TOKEN", "ETCD_BACKUP_READ_TOKEN", "ETCD_BACKUP_BACKUP_TOKEN",
               "ETCD_BACKUP_DOWNLOAD_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
"""The variables the processes read secrets from (boto3 the AWS_* ones, for an s3:// backup-dir)."""
HINT = f"holds the placeholder {PLACEHOLDER} (deploy/kubernetes/*/secret.yaml): put the real value there"


def holds_placeholder(value: str | bytes) -> bool:
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return PLACEHOLDER.casefold() in text.casefold()


def refuse_placeholders(raw: Any, environ: dict[str, str] | os._Environ[str]) -> None:
    """Raise ConfigError naming the first config key (e.g. "etcd.password") or variable holding the placeholder."""
    for key, value in _strings(raw, ""):
        if holds_placeholder(value):
            raise ConfigError(key or "config", HINT)
    for name in ENVIRONMENT:
        if holds_placeholder(environ.get(name, "")):
            raise ConfigError(name, HINT)


def refuse_placeholder_content(key: str, shown: str, content: str | bytes) -> None:
    """Raise ConfigError naming `key` if the file `shown` (its path as messages show it) holds the placeholder
    outside a comment line (a recipients file may say "# replace-me: ..." in its comments)."""
    text = content.decode(errors="replace") if isinstance(content, bytes) else content
    if any(holds_placeholder(line) for line in text.splitlines() if not line.lstrip().startswith("#")):
        raise ConfigError(key, f"{shown} {HINT}")


def _strings(value: Any, where: str) -> list[tuple[str, str]]:
    """Every string value of a YAML document, with the dotted key it is under (an unknown key is refused anyway)."""
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, dict):
        return [found for key, item in value.items()
                for found in _strings(item, f"{where}.{key}" if where else str(key))]
    if isinstance(value, list):
        return [found for item in value for found in _strings(item, where)]
    return []
