"""Load and validate the YAML config file once, into typed, immutable objects."""

from __future__ import annotations

import io
import ipaddress
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import yaml
from croniter import CroniterBadDateError, croniter
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

# Bounds of values that pass for the right type but cannot work (issue 19).
ETCD_TIMEOUT_BOUNDS = (0.1, 600.0)
"""Seconds: etcd.timeout bounds connecting and authenticating, not the snapshot. Below 100ms even a
healthy member on the same host misses it; beyond 10 minutes a dead endpoint holds the backup that long."""
BACKUP_TIMEOUT_BOUNDS = (0.1, 3600.0)
"""Seconds a POST waits before answering 202: beyond an hour (a job's own limit, common.jobs.JOB_TIMEOUT)
it waits for nothing; below 100ms it is no wait at all."""
RETENTION_HORIZON = 100 * 365.25 * 86400
"""Seconds: no retention rule reaches back more than 100 years (beyond ~2,000, date arithmetic overflows)."""
MAX_AGE_BOUNDS = (60.0, RETENTION_HORIZON)
TIER_LENGTHS = {"hourly": 3600, "daily": 86400, "weekly": 7 * 86400}
"""Seconds per step of each retention tier: a tier may count steps up to RETENTION_HORIZON."""
CRON_HORIZON = timedelta(days=366)
"""A schedule must fire at least this often: one that never fires (30 February) stops the scheduler."""
MAX_CONFIG_BYTES = 1 << 20
MAX_NESTING = 20
"""YAML nesting the file may have; the config itself needs 4 (etcd: endpoints: - URL)."""
MAX_NUMBER_CHARACTERS = 30
"""Beyond it a number is past every bound (and past 4,300 digits Python will not even read it)."""
MASK = "***"

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
        # One line whatever a key or a path holds (a newline, a NUL): the message is one stderr line.
        key = printable(key)
        super().__init__(f"{key}: {printable(problem)}")
        self.key = key


def printable(text: str) -> str:
    """`text` with its control characters escaped, as Python writes them in a string literal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


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
    tls_files: tuple[tuple[str, str], ...] = ()
    """(key, path) of each PEM read from a file, e.g. ("tls-ca", "/etc/etcd/ca.pem"); the others were inline."""


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


def format_duration(seconds: float) -> str:
    """Write `seconds` in Go's duration syntax, as parse_duration reads it back ("1m30s", "500ms")."""
    left = round(seconds * 1e9)
    parts = []
    for unit, nanoseconds in (("h", 3600 * 10**9), ("m", 60 * 10**9), ("s", 10**9), ("ms", 10**6),
                              ("us", 10**3), ("ns", 1)):
        count, left = divmod(left, nanoseconds)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0"


def split_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port") into its parts."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT with a port in 1-65535, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def load_config(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read the YAML file at `path`; raise ConfigError naming the first bad key."""
    try:
        # A named stream: YAML's errors then say which file (a str would be "<unicode string>").
        loader = _StrictLoader(_NamedText(_read_config_file(path), str(path)))
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{path} is not valid YAML: {_one_line(exc)}") from None
    return parse_config(raw, os.environ if environ is None else environ)


def _read_config_file(path: str | os.PathLike[str]) -> str:
    try:
        # Non-blocking: opening a FIFO nobody writes to would otherwise wait forever. Checked before
        # reading: a device (/dev/zero) or a directory is no config either.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError("config", f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("config", f"{path} is larger than {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError("config", f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} on line {line}") from None


class _NamedText(io.StringIO):
    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name


class _StrictLoader(yaml.SafeLoader):
    """safe_load, refusing what it would take silently or crash on: duplicate keys (it keeps the last),
    deep nesting (RecursionError), NUL in a string (paths and secrets cannot hold one), numbers too long
    to read. It checks each node as it is composed, where the key path is known."""

    def __init__(self, stream: _NamedText) -> None:
        super().__init__(stream)
        self._keys: list[str] = []
        self._depth = 0

    def _where(self, *more: str) -> str:
        return ".".join([*self._keys, *more][:2]) or "config"  # the config's keys are two deep at most

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self._depth >= MAX_NESTING:
            line = self.get_mark().line + 1  # where the reader is: at the too-deep node or just past it
            raise ConfigError(self._where(), f"nested more than {MAX_NESTING} levels deep (line {line}); "
                                             "no setting nests like that")
        # A mapping's value is composed with its key node as `index`; a key and a list item are not.
        key = index.value if isinstance(index, yaml.ScalarNode) else None
        if key is not None:
            self._keys.append(str(key))
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
            is_key = isinstance(parent, yaml.MappingNode) and index is None
            if isinstance(node, yaml.ScalarNode):
                self._check_scalar(node, self._where(node.value) if is_key else self._where())
            elif isinstance(node, yaml.MappingNode):
                self._check_keys(node)
        finally:
            self._depth -= 1
            if key is not None:
                self._keys.pop()
        return node

    def _check_scalar(self, node: yaml.ScalarNode, where: str) -> None:
        if "\0" in node.value:
            raise ConfigError(where, f"contains a NUL character (line {node.start_mark.line + 1})")
        if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_NUMBER_CHARACTERS:
            raise ConfigError(where, f"a number of {len(node.value)} digits, beyond every bound")

    def _check_keys(self, node: yaml.MappingNode) -> None:
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                line = key.start_mark.line + 1
                first = seen.get((key.tag, key.value))
                if first is not None:
                    raise ConfigError(self._where(key.value), f"duplicate key (lines {first} and {line}): "
                                                              "YAML would silently keep the last")
                seen[key.tag, key.value] = line


def parse_config(raw: Any, environ: dict[str, str] | os._Environ[str]) -> Config:
    """Validate an already-parsed YAML document."""
    top = _Section(raw, "", TOP_LEVEL_KEYS)
    return Config(
        etcd=_parse_etcd(top.require("etcd")),
        backup_dir=_backup_dir(top.get_str("backup-dir", DEFAULT_BACKUP_DIR)),
        listen=top.get_listen("listen", DEFAULT_LISTEN),
        rotate=top.get_int("rotate", DEFAULT_ROTATE, minimum=1),
        redis_url=_redis_url(top.get_str("redis-url", None), environ),
        backup_timeout=top.get_duration("backup-timeout", DEFAULT_BACKUP_TIMEOUT, BACKUP_TIMEOUT_BOUNDS),
        gzip_level=top.get_int("gzip-level", DEFAULT_GZIP_LEVEL, minimum=0, maximum=9),
        api_token=_api_token(top.get_str("api-token", None), environ),
        **_api_tls(top.get_str("api-tls-cert", None), top.get_str("api-tls-key", None)),
        retention=_parse_retention(top.get_section("retention")),
        schedule=_schedule(top.get_str("schedule", None)),
        skip_unchanged=top.get_bool("skip-unchanged", False),
        drill=_schedule(top.get_str("drill", None), "drill"),
    )


def next_fire(expression: str, after: datetime) -> datetime:
    """When the cron `expression`, read in UTC, next fires after `after` (RQ would read it in local time)."""
    fire: datetime = croniter(expression, after.astimezone(UTC)).get_next(datetime)
    return fire


def _schedule(expression: str | None, key: str = "schedule") -> str | None:
    if expression is None:
        return None
    if not croniter.is_valid(expression):
        raise ConfigError(key, f"not a cron expression: {expression!r} (e.g. \"0 */6 * * *\")")
    # From four starts a year apart: "0 0 29 2 *" would otherwise pass or fail by the date it is checked.
    now = datetime.now(UTC)
    for start in (now + k * CRON_HORIZON for k in range(4)):
        try:
            fires_in_time = next_fire(expression, start) - start <= CRON_HORIZON
        except CroniterBadDateError:  # nothing found for decades
            fires_in_time = False
        if not fires_in_time:
            raise ConfigError(key, f"{expression!r} does not fire within a year (is there such a day?)")
    return expression


def _parse_retention(raw: Any) -> RetentionConfig | None:
    if raw is None:
        return None
    section = _Section(raw, "retention.", RETENTION_KEYS)
    tiers = {key: section.get_int(key, 0, minimum=0, maximum=int(RETENTION_HORIZON // length), note="100 years")
             for key, length in TIER_LENGTHS.items()}
    retention = RetentionConfig(
        # `max-age: null` is no max-age, as every other key's null is its default.
        max_age=section.get_duration("max-age", "1m", MAX_AGE_BOUNDS, note="100 years")
        if raw.get("max-age") is not None else None,
        **tiers,
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
    ca, ca_file = section.get_pem("tls-ca")
    cert, cert_file = section.get_pem("tls-cert")
    key, key_file = section.get_pem("tls-key")
    if (cert is None) != (key is None):
        raise ConfigError("etcd.tls-key" if key is None else "etcd.tls-cert",
                          "tls-cert and tls-key must be given together")
    return EtcdConfig(
        endpoints=tuple(endpoints),
        prefix=section.get_str("prefix", ""),
        timeout=section.get_duration("timeout", DEFAULT_ETCD_TIMEOUT, ETCD_TIMEOUT_BOUNDS),
        username=username,
        password=password,
        tls_ca=ca,
        tls_cert=cert,
        tls_key=key,
        tls_files=tuple((name, path) for name, path in (("tls-ca", ca_file), ("tls-cert", cert_file),
                                                        ("tls-key", key_file)) if path is not None),
    )


def _backup_dir(value: str) -> Path:
    if not value:
        raise ConfigError("backup-dir", "is empty (it would mean the current directory): give a directory")
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
    # A token written but empty is a mistake, not a wish for an open API: refused like a short one.
    token = value if value is not None else environ.get(API_TOKEN_ENV) or None
    if token is not None and len(token) < MIN_API_TOKEN_LENGTH:
        key = "api-token" if value is not None else API_TOKEN_ENV
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


def effective_config(config: Config) -> dict[str, Any]:
    """The settings `config` runs with, as a config file would give them, secrets masked (`config check`)."""
    etcd = config.etcd
    files = dict(etcd.tls_files)
    etcd_section: dict[str, Any] = {
        "endpoints": list(etcd.endpoints), "timeout": format_duration(etcd.timeout), "prefix": etcd.prefix,
        "username": etcd.username, "password": _masked(etcd.password),
    }
    for name, pem in (("tls-ca", etcd.tls_ca), ("tls-cert", etcd.tls_cert), ("tls-key", etcd.tls_key)):
        if name in files:
            etcd_section[f"{name}-file"] = files[name]
        elif pem is not None:  # inline: certificates are public, the key is not
            etcd_section[name] = MASK if name == "tls-key" else pem.decode()
    retention = config.retention
    return {
        "backup-dir": str(config.backup_dir),
        "listen": config.listen,
        "rotate": config.rotate,
        "etcd": etcd_section,
        "redis-url": None if config.redis_url is None else _masked_url(config.redis_url),
        "backup-timeout": format_duration(config.backup_timeout),
        "gzip-level": config.gzip_level,
        "api-token": _masked(config.api_token),
        "api-tls-cert": None if config.api_tls_cert is None else str(config.api_tls_cert),
        "api-tls-key": None if config.api_tls_key is None else str(config.api_tls_key),
        "retention": None if retention is None else {
            "max-age": None if retention.max_age is None else format_duration(retention.max_age),
            "hourly": retention.hourly, "daily": retention.daily, "weekly": retention.weekly,
        },
        "schedule": config.schedule,
        "skip-unchanged": config.skip_unchanged,
        "drill": config.drill,
    }


def _masked(secret: str | None) -> str | None:
    return None if secret is None else MASK


def _masked_url(url: str) -> str:
    """`url` with its password masked: in the user part, and in a `password=` query (redis-py reads both)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name == "password" for name, _ in pairs):
        query = urlencode([(name, MASK if name == "password" else value) for name, value in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


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

    def get_int(self, key: str, default: int, minimum: int, maximum: int | None = None, note: str = "") -> int:
        value = self._value(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self._key(key), f"expected an integer, got {_type_name(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            limits = f"at least {minimum}" if value < minimum else f"at most {maximum}" + (f" ({note})" if note else "")
            raise ConfigError(self._key(key), f"must be {limits}, got {value}")
        return value

    def get_bool(self, key: str, default: bool) -> bool:
        return bool(self._get_typed(key, default, bool, "true or false"))

    def get_duration(self, key: str, default: str, bounds: tuple[float, float], note: str = "") -> float:
        text = self.get_str(key, default)
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise ConfigError(self._key(key), str(exc)) from None
        shown = repr(text) if len(text) <= 40 else f"a {len(text)}-character duration"
        if seconds <= 0:
            raise ConfigError(self._key(key), f"must be longer than zero, got {shown}")
        minimum, maximum = bounds
        if seconds < minimum:
            raise ConfigError(self._key(key), f"must be at least {format_duration(minimum)}, got {shown}")
        if seconds > maximum:  # also infinity: float() makes it of 400 digits
            limit = format_duration(maximum) + (f" ({note})" if note else "")
            raise ConfigError(self._key(key), f"must be at most {limit}, got {shown}")
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

    def get_pem(self, name: str) -> tuple[bytes | None, str | None]:
        """Read `name` (inline PEM, or a path) or `name-file` (a path); at most one of them.
        Return the PEM and the file it came from (None: inline)."""
        inline, file_key = self.get_str(name, None), f"{name}-file"
        path = self.get_str(file_key, None)
        if inline is not None and path is not None:
            raise ConfigError(self._key(name), f"give either {name} or {file_key}, not both")
        if inline is not None and inline.lstrip().startswith("-----BEGIN"):
            return str(inline).encode(), None
        source, key = (inline, name) if inline is not None else (path, file_key)
        if source is None:
            return None, None
        try:
            with open(source, "rb") as f:
                return f.read(), os.path.abspath(source)
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
        print(f"etcd-backup: bad config {printable(path)}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
