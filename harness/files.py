"""Files the tests write that hold secrets (configs, keys): 0600, as an operator must keep them
(common.config.secret_files refuses them otherwise), whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def write_private(path: Path, data: str | bytes) -> Path:
    """Write `data` to `path`, which is then 0600 (also a file that was there, with another mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(data.encode() if isinstance(data, str) else data)
    return path


def write_config(path: Path, document: dict[str, Any]) -> Path:
    """Write the config `document` to `path` as YAML, 0600: it may hold secrets (api-token, S3 keys)."""
    return write_private(path, yaml.safe_dump(document))
