"""The files the config names (and the config file itself), read with one rule: common.small_files' (opened
without blocking, a regular file once symlinks are followed, read up to a bound), its refusal one ConfigError
naming the key."""

from __future__ import annotations

import os

from common.config.errors import ConfigError
from common.encryption import shown_key_path
from common.small_files import NotASmallFile, read_small_file

MAX_KEY_FILE = 1 << 20
"""A key, a certificate and its chain, a recipients or identity file: a few KiB (a bundle of every public CA
is about 200 KiB); anything bigger is not one."""


def read_named_file(key: str, path: str | os.PathLike[str], limit: int) -> tuple[bytes, os.stat_result]:
    """The bytes of the file at `path` that setting `key` names (e.g. "etcd.tls-ca-file"), and its status as
    read; ConfigError naming `key` if it cannot be read, is no regular file (a pipe, a device, a directory),
    or holds more than `limit` bytes."""
    shown = shown_key_path(path)  # a secret key given where its path belongs is never quoted
    try:
        return read_small_file(path, limit)
    except NotASmallFile as exc:
        raise ConfigError(key, f"{shown} is {exc.strerror}") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot read {shown}: {exc.strerror}") from None
