"""Load and validate the YAML config file once, into typed, immutable objects."""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from croniter import croniter
from redis import connection as redis_connection

DEFAULT_BACKUP_DIR = "/etcd-backup/"
DEFAULT_LISTEN = "0.0.0.0:8080"
DEFAULT_ROTATE = 14
DEFAULT_ENDPOINTS = ("http://127.0.0.1:2379",)
DEFAULT_ETCD_TIMEOUT = "2s"
DEFAULT_BACKUP_TIMEOUT = "5m"
DEFAULT_GZIP_LEVEL = 1
REDIS_URL_ENV = "REDIS_URL"
API_TOKEN_ENV = "ETCD_BACKUP_API_TOKEN"
MIN_API_TOKEN_LENGTH = 16

TOP_LEVEL_KEYS = frozenset({
    "backup-dir", "listen", "rotate", "etcd", "redis-url", "backup-timeout", "gzip-level",
    "api-token", "api-tls-cert", "api-tls-key", "retention", "schedule", "skip-unchanged", "drill",
})
RETENTION_KEYS = frozenset({"max-age", "hourly", "daily", "weekly"})
ETCD_KEYS = frozenset({
    "endpoints", "prefix", "timeout", "username", "password",
    "tls-ca", "tls-cert", "tls-key", "tls-ca-file", "tls-cert-file", "tls-key-file",
})


class ConfigError(Exception):
    """A config value is missing or wrong; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class EtcdConfig:
    """Connection settings for etcd, as cybozu-go/etcdutil's Config spells them."""

    endpoints: tuple[str, ...] = DEFAULT_ENDPOINTS
    prefix: str = ""
    timeout: float = 2.0
    username: str | None = None
    # Secrets never appear in a repr (and so never in a log line that prints the config).
    password: str | None = field(default=None, repr=False)
    tls_ca: bytes | None = field(default=None, repr=False)
    tls_cert: bytes | None = field(default=None, repr=False)
    tls_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RetentionConfig:
    """The optional `retention` section (common.retention applies it)."""

    max_age: float | None = None
    """Seconds; backups younger than this are kept."""
    hourly: int = 0
    daily: int = 0
    weekly: int = 0

    @property
    def tiered(self) -> bool:
        return bool(self.hourly or self.daily or self.weekly)


@dataclass(frozen=True)
class Config:
    """The whole service's settings: the seed's keys plus this service's own."""

    etcd: EtcdConfig
    backup_dir: Path = Path(DEFAULT_BACKUP_DIR)
    listen: str = DEFAULT_LISTEN
    rotate: int = DEFAULT_ROTATE
    redis_url: str | None = field(default=None, repr=False)
    backup_timeout: float = 300.0
    gzip_level: int = DEFAULT_GZIP_LEVEL
    api_token: str | None = field(default=None, repr=False)
    """When set, every request but /healthz needs `Authorization: Bearer <api_token>`."""
    api_tls_cert: Path | None = None
    api_tls_key: Path | None = None
    """When set (both), the API listens with TLS."""
    retention: RetentionConfig | None = None
    schedule: str | None = None
    """A cron expression, in UTC (five fields; a sixth for seconds): when scheduled backups are taken."""
    skip_unchanged: bool = False
    """A scheduled backup is skipped when etcd's revision is the newest backup's."""
    drill: str | None = None
    """A cron expression, in UTC: when the newest backup is restored and started to prove it works."""

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return split_listen(self.listen)

    @property
    def open_to_the_network(self) -> bool:
        """Whether the API listens beyond loopback without a token: anyone who reaches it gets every Secret."""
        host, _ = self.listen_host_port
        if self.api_token is not None or host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:  # a host name other than localhost
            return True


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Parse a Go duration string ("2s", "500ms", "1m30s") into seconds."""
    pos, total = 0, 0.0
    if text == "0":
        return 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r} (use Go syntax such as 2s, 500ms, 1m30s)")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r} (use Go syntax such as 2s, 500ms, 1m30s)")
    return total


def split_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port") into its parts."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT with a port in 1-65535, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read the YAML file at `path`; raise ConfigError naming the first bad key."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{path} is not valid YAML: {_one_line(exc)}") from None
    return parse_config(raw, os.environ if environ is None else environ)


def parse_config(raw: Any, environ: dict[str, str] | os._Environ[str]) -> Config:
    """Validate an already-parsed YAML document."""
    top = _Section(raw, "", TOP_LEVEL_KEYS)
    return Config(
        etcd=_parse_etcd(top.require("etcd")),
        backup_dir=_backup_dir(top.get_str("backup-dir", DEFAULT_BACKUP_DIR)),
        listen=top.get_listen("listen", DEFAULT_LISTEN),
        rotate=top.get_int("rotate", DEFAULT_ROTATE, minimum=1),
        redis_url=_redis_url(top.get_str("redis-url", None), environ),
        backup_timeout=top.get_duration("backup-timeout", DEFAULT_BACKUP_TIMEOUT),
        gzip_level=top.get_int("gzip-level", DEFAULT_GZIP_LEVEL, minimum=0, maximum=9),
        api_token=_api_token(top.get_str("api-token", None), environ),
        **_api_tls(top.get_str("api-tls-cert", None), top.get_str("api-tls-key", None)),
        retention=_parse_retention(top.get_section("retention")),
        schedule=_schedule(top.get_str("schedule", None)),
        skip_unchanged=top.get_bool("skip-unchanged", False),
        drill=_schedule(top.get_str("drill", None), "drill"),
    )


def _schedule(expression: str | None, key: str = "schedule") -> str | None:
    if expression is not None and not croniter.is_valid(expression):
        raise ConfigError(key, f"not a cron expression: {expression!r} (e.g. \"0 */6 * * *\")")
    return expression


def _parse_retention(raw: Any) -> RetentionConfig | None:
    if raw is None:
        return None
    section = _Section(raw, "retention.", RETENTION_KEYS)
    retention = RetentionConfig(
        max_age=section.get_duration("max-age", "1s") if "max-age" in raw else None,
        hourly=section.get_int("hourly", 0, minimum=0),
        daily=section.get_int("daily", 0, minimum=0),
        weekly=section.get_int("weekly", 0, minimum=0),
    )
    if retention.max_age is None and not retention.tiered:
        raise ConfigError("retention", "give max-age, or at least one of hourly, daily, weekly")
    return retention


def _parse_etcd(raw: Any) -> EtcdConfig:
    section = _Section(raw, "etcd.", ETCD_KEYS)
    endpoints = section.get_str_list("endpoints", DEFAULT_ENDPOINTS)
    for url in endpoints:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("etcd.endpoints", f"expected http:// or https:// URLs, got {url!r}")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ConfigError("etcd.endpoints", f"bad port in {url!r}") from None
    username = section.get_str("username", None)
    password = section.get_str("password", None)
    if (username is None) != (password is None):
        missing = "etcd.password" if password is None else "etcd.username"
        raise ConfigError(missing, "username and password must be given together")
    cert = section.get_pem("tls-cert")
    key = section.get_pem("tls-key")
    if (cert is None) != (key is None):
        raise ConfigError("etcd.tls-key" if key is None else "etcd.tls-cert",
                          "tls-cert and tls-key must be given together")
    return EtcdConfig(
        endpoints=tuple(endpoints),
        prefix=section.get_str("prefix", ""),
        timeout=section.get_duration("timeout", DEFAULT_ETCD_TIMEOUT),
        username=username,
        password=password,
        tls_ca=section.get_pem("tls-ca"),
        tls_cert=cert,
        tls_key=key,
    )


def _backup_dir(value: str) -> Path:
    # Absolute: gunicorn's --chdir and daemons must not change which directory is meant.
    path = Path(value).absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError("backup-dir", f"{value} is not a directory")
    try:
        # 0700: a snapshot holds every secret stored in etcd.
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("backup-dir", f"cannot create {value}: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError("backup-dir", f"{value} is not writable")
    # Refused, not chmod-ed: files may already have been planted while it was open (a FIFO, a backup
    # named in the future), and it may be open on purpose (a tmpfs mount, a share): the operator decides.
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise ConfigError("backup-dir", f"{value} is owned by uid {st.st_uid}, not by this process' user "
                                        f"(uid {os.geteuid()}): its owner could plant or remove backups")
    if st.st_mode & 0o022:
        raise ConfigError("backup-dir", f"{value} is writable by group or others (mode {st.st_mode & 0o777:04o}): "
                                        "anyone could plant files there; make it private (chmod 0700)")
    return path


REDIS_URL_HINT = "percent-encode special characters in the password (# as %23, / as %2F, ? as %3F, @ as %40, % as %25)"


def _redis_url(value: str | None, environ: dict[str, str] | os._Environ[str]) -> str | None:
    url = value or environ.get(REDIS_URL_ENV) or None
    if url is not None and (problem := _redis_url_problem(url)) is not None:
        raise ConfigError("redis-url" if value else REDIS_URL_ENV, problem)
    return url


def _redis_url_problem(url: str) -> str | None:
    """Why Redis' client would misread `url` (or fail on it with a traceback), or None.

    The URL holds the password: the answer never quotes it, nor any part of it. A password's `#`, `/`
    or `?` ends the URL's host part early, so the rest of the password is taken for the port, the
    database or the query.
    """
    if not url.startswith(("redis://", "rediss://", "unix://")):  # as redis-py checks it: lower case
        return "expected a redis://, rediss:// or unix:// URL"
    try:
        parts = urlsplit(url)
        port = parts.port if parts.scheme != "unix" else None
    except ValueError:  # a port that is no number, or an unbalanced [ of an IPv6 host
        return f"the host part is not HOST:PORT: {REDIS_URL_HINT}"
    # Where the host part ended early, the password's rest (and its "@host") lands after it.
    if "#" in url or "@" in url[len(parts.scheme) + len("://") + len(parts.netloc):]:
        return f"the password ends the host part early: {REDIS_URL_HINT}"
    if parts.scheme == "unix":
        return None if parts.path else "expected unix:///path/to/redis.sock"
    if not parts.hostname or port == 0:  # redis-py would quietly use localhost, or port 6379
        return f"no host or port: {REDIS_URL_HINT}"
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        return f"the path must be a database number (/0): {REDIS_URL_HINT}"
    try:
        redis_connection.parse_url(url)  # type: ignore[no-untyped-call]  # what redis.Redis.from_url does
    except ValueError:  # its messages may quote the URL
        return f"not a URL that Redis' client reads: {REDIS_URL_HINT}"
    return None


def _api_token(value: str | None, environ: dict[str, str] | os._Environ[str]) -> str | None:
    token = value or environ.get(API_TOKEN_ENV) or None
    if token is not None and len(token) < MIN_API_TOKEN_LENGTH:
        key = "api-token" if value else API_TOKEN_ENV
        raise ConfigError(key, f"must be at least {MIN_API_TOKEN_LENGTH} characters long")
    return token


def _api_tls(cert: str | None, key: str | None) -> dict[str, Path]:
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        missing = "api-tls-cert" if cert is None else "api-tls-key"
        raise ConfigError(missing, "api-tls-cert and api-tls-key go together")
    files = {}
    for name, value in (("api-tls-cert", cert), ("api-tls-key", key)):
        path = Path(value).absolute()
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(name, f"{value} is not a readable file")
        files[name.replace("-", "_")] = path
    return files


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


class _Section:
    """One YAML mapping being validated; remembers which keys were read."""

    def __init__(self, raw: Any, prefix: str, known: frozenset[str]) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            where = prefix.rstrip(".") or "config"
            raise ConfigError(where, f"expected a mapping, got {_type_name(raw)}")
        # Unknown keys are refused before anything is acted on: a typo must not pass silently.
        for key in raw:
            if key not in known:
                raise ConfigError(prefix + str(key), "unknown key")
        self._raw: dict[Any, Any] = raw
        self._prefix = prefix

    def _key(self, key: str) -> str:
        return self._prefix + key

    def _value(self, key: str) -> Any:
        return self._raw.get(key)

    def get_section(self, key: str) -> Any:
        """The raw value of an optional sub-section (validated by its own _Section), or None."""
        return self._value(key)

    def require(self, key: str) -> Any:
        if key not in self._raw:
            raise ConfigError(self._key(key), "is required")
        return self._value(key)

    def _get_typed(self, key: str, default: Any, kind: type, expected: str) -> Any:
        value = self._value(key)
        if value is None:
            return default
        if not isinstance(value, kind):
            raise ConfigError(self._key(key), f"expected {expected}, got {_type_name(value)}")
        return value

    def get_str(self, key: str, default: str | None) -> Any:
        return self._get_typed(key, default, str, "a string")

    def get_int(self, key: str, default: int, minimum: int, maximum: int | None = None) -> int:
        value = self._value(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self._key(key), f"expected an integer, got {_type_name(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            limits = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
            raise ConfigError(self._key(key), f"must be {limits}, got {value}")
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        return bool(self._get_typed(key, default, bool, "true or false"))

    def get_duration(self, key: str, default: str) -> float:
        text = self.get_str(key, default)
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise ConfigError(self._key(key), str(exc)) from None
        if seconds <= 0:
            raise ConfigError(self._key(key), f"must be longer than zero, got {text!r}")
        return seconds

    def get_listen(self, key: str, default: str) -> str:
        text: str = self.get_str(key, default)
        try:
            split_listen(text)
        except ValueError as exc:
            raise ConfigError(self._key(key), str(exc)) from None
        return text

    def get_str_list(self, key: str, default: tuple[str, ...]) -> list[str]:
        value = self._value(key)
        if value is None:
            return list(default)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise ConfigError(self._key(key), "expected a non-empty list of strings")
        return value

    def get_pem(self, name: str) -> bytes | None:
        """Read `name` (inline PEM, or a path) or `name-file` (a path); at most one of them."""
        inline, file_key = self.get_str(name, None), f"{name}-file"
        path = self.get_str(file_key, None)
        if inline is not None and path is not None:
            raise ConfigError(self._key(name), f"give either {name} or {file_key}, not both")
        if inline is not None and inline.lstrip().startswith("-----BEGIN"):
            return str(inline).encode()
        source, key = (inline, name) if inline is not None else (path, file_key)
        if source is None:
            return None
        try:
            with open(source, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ConfigError(self._key(key), f"cannot read {source}: {exc.strerror}") from None


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


CONFIG_ENV = "ETCD_BACKUP_CONFIG"
"""Environment variable with the config file's path, for processes started by gunicorn or a Procfile."""
DEFAULT_CONFIG_PATH = "/etc/etcd-backup/config.yml"


def exit_unless_shared_queue(config: Config, situation: str) -> None:
    """Exit 2 if `config` has no Redis: the embedded queue cannot link separate processes."""
    if config.redis_url is None:
        print(f"etcd-backup: redis-url: required when {situation} "
              f"(set redis-url in the config or {REDIS_URL_ENV})", file=sys.stderr)
        raise SystemExit(2)


def load_config_or_exit(path: str | None) -> Config:
    """Load the config for a process that cannot start without it: one line and exit 2 on error."""
    path = os.path.abspath(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"etcd-backup: bad config {path}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
