"""Files that hold secrets are not taken as given: a private key the config names (the age identity, a TLS
key), and the config file itself when a secret is written in it, are refused when users other than the
owner can read or change them, as ssh refuses such a private key.

The rule is PostgreSQL's for its ssl_key_file: a file this process' user owns must be 0600 or less; a file
root owns may also be read through its group (0640 or less), which is how a Kubernetes Secret volume with
fsGroup mounts a key (root:fsGroup, 0440) and how a host shares one with a service's group (root:ssl-cert).
A file any other user owns is refused: that user can read it, or replace it, whatever its mode.
"""

from __future__ import annotations

import os
import shlex
import stat
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from common.config.errors import ConfigError
from common.encryption import shown_key_path

OWN_FILE_ACCESS = 0o077
"""The access bits a file of this process' user must not have: any for group or others."""
ROOT_FILE_ACCESS = 0o037
"""Those a file of root's must not have: the group may read it, no more; others nothing."""
MOVED_OUT = {
    "api-token": "$ETCD_BACKUP_API_TOKEN", "read-token": "$ETCD_BACKUP_READ_TOKEN",
    "backup-token": "$ETCD_BACKUP_BACKUP_TOKEN", "download-token": "$ETCD_BACKUP_DOWNLOAD_TOKEN",
    "redis-url": "$REDIS_URL", "etcd.tls-key": "etcd.tls-key-file",
    # boto3 takes an access key id given without its secret for partial credentials: both move.
    "s3.secret-access-key": "$AWS_SECRET_ACCESS_KEY (with s3.access-key-id to $AWS_ACCESS_KEY_ID)",
    "s3.session-token": "$AWS_SESSION_TOKEN (with the keys to $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY)",
}
"""Where a secret written in the config can live instead: an environment variable, or a file of its own."""


def check_private_file(key: str, path: str | os.PathLike[str]) -> None:
    """Raise ConfigError naming `key` (e.g. "encryption.identity-file") unless the file at `path` is private
    to this process' user (see the module's rule); the message says what to run. A symlink is judged by
    the file it points to (a Kubernetes Secret's files are symlinks)."""
    shown = shown_key_path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(key, f"{shown}: {exc.strerror}") from None
    problem = exposure(st, shlex.quote(os.fspath(path)))
    if problem is not None:
        raise ConfigError(key, f"{shown} {problem}")


def exposure(st: os.stat_result, quoted_path: str) -> str | None:
    """Why a file of status `st` is not private to this process' user, ending with the command that makes
    it so; None if it is private."""
    euid, mode = os.geteuid(), stat.S_IMODE(st.st_mode)
    if st.st_uid not in (euid, 0):
        return (f"is owned by uid {st.st_uid}, not by this process' user (uid {euid}) or root: its owner can "
                f"read or replace it; make it this user's (chown {euid} {quoted_path}) and run chmod 600 {quoted_path}")
    if st.st_uid == euid and mode & OWN_FILE_ACCESS:
        return f"{_who(mode & OWN_FILE_ACCESS)} (mode {mode:04o}); run chmod 600 {quoted_path}"
    if st.st_uid != euid and mode & ROOT_FILE_ACCESS:  # root's, and this process is not root
        return (f"{_who(mode & ROOT_FILE_ACCESS)} (mode {mode:04o}); run chmod 640 {quoted_path} (root's file, "
                "read through its group), or chmod 600 a copy this user owns")
    return None


def _who(bits: int) -> str:
    """`bits` (of group and others) in words: "group and others can read it", "others can write it"."""
    who = [name for name, mask in (("group", 0o070), ("others", 0o007)) if bits & mask]
    can = [name for name, mask in (("read", 0o044), ("write", 0o022), ("execute", 0o011)) if bits & mask]
    return f"{' and '.join(who)} can {' and '.join(can)} it"


def check_config_file(path: str | os.PathLike[str], st: os.stat_result, raw: Any) -> None:
    """Raise ConfigError if the config file at `path` (of status `st`, its document `raw`, already valid)
    holds a secret and is not private to this process' user. One without secrets may be anyone's to read
    (a Kubernetes ConfigMap is 0644)."""
    secrets = inline_secrets(raw)
    problem = exposure(st, shlex.quote(os.fspath(path))) if secrets else None
    if problem is None:
        return
    moves = [f"{key} to {MOVED_OUT[key]}" for key in secrets if key in MOVED_OUT]
    raise ConfigError("config", f"{path} holds secrets ({', '.join(secrets)}) and {problem}"
                                + (f"; or move {', '.join(moves)}" if moves else ""))


def inline_secrets(raw: Any) -> list[str]:
    """The keys of a valid config document that hold a secret written in it (not a file's path)."""
    if not isinstance(raw, dict):
        return []
    etcd, s3 = raw.get("etcd") or {}, raw.get("s3") or {}
    tls_key = etcd.get("tls-key")
    found = {
        **{key: raw.get(key) is not None for key in ("api-token", "read-token", "backup-token", "download-token")},
        "redis-url": raw.get("redis-url") is not None and _has_password(raw["redis-url"]),
        "etcd.password": etcd.get("password") is not None,
        "etcd.tls-key": tls_key is not None and tls_key.lstrip().startswith("-----BEGIN"),  # else it is a path
        "s3.secret-access-key": s3.get("secret-access-key") is not None,
        "s3.session-token": s3.get("session-token") is not None,
    }
    return [key for key, holds in found.items() if holds]


def _has_password(url: str) -> bool:
    """Whether a Redis URL holds a password: in its user part, or as a `password=` query (redis-py reads both)."""
    parts = urlsplit(url)
    return parts.password is not None or any(name == "password" for name, _ in parse_qsl(parts.query))
