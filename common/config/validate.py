"""The service's rules for each key: validate an already-parsed YAML document into a Config, the
first mistake a ConfigError naming the key. Reads the files the config names (PEMs, the API's TLS
files), refusing private keys that others can read (common.config.secret_files); creates nothing
(backup-dir is prepared at start-up: common.startup)."""

from __future__ import annotations

import hmac
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from croniter import CroniterBadDateError, croniter

from common.config import tls_files
from common.config.errors import ConfigError
from common.config.files import MAX_KEY_FILE, read_named_file
from common.config.placeholders import refuse_placeholder_content, refuse_placeholders
from common.config.schema import (
    DEFAULT_BACKUP_DIR,
    DEFAULT_BACKUP_TIMEOUT,
    DEFAULT_COMPACT_AFTER_REVISIONS,
    DEFAULT_CONCURRENCY,
    DEFAULT_DELTA_PERIOD,
    DEFAULT_ENDPOINTS,
    DEFAULT_ETCD_TIMEOUT,
    DEFAULT_GZIP_LEVEL,
    DEFAULT_LISTEN,
    DEFAULT_MAX_QUEUED_JOBS,
    DEFAULT_PART_SIZE,
    DEFAULT_ROTATE,
    MIN_PART_SIZE,
    Config,
    EncryptionConfig,
    EtcdConfig,
    RetentionConfig,
    S3Config,
    SigningConfig,
    split_host,
)
from common.config.secret_files import check_private_file
from common.config.section import Section
from common.encryption import identities_open, parse_identities, parse_recipient, shown_key_path
from common.signing import BadKey, parse_signing_key, parse_verify_key

REDIS_URL_ENV = "REDIS_URL"
API_TOKEN_ENV = "ETCD_BACKUP_API_TOKEN"
TOKEN_ENV = {"api-token": API_TOKEN_ENV, "read-token": "ETCD_BACKUP_READ_TOKEN",
             "backup-token": "ETCD_BACKUP_BACKUP_TOKEN", "download-token": "ETCD_BACKUP_DOWNLOAD_TOKEN"}
"""Each API token's key, and the environment variable it is taken from when the config leaves it out (api.auth
says what each may do)."""
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
DELTA_PERIOD_BOUNDS = (0.1, 600.0)
"""Seconds between deltas: below 100ms a delta per write; beyond 10 minutes the recovery point of a full backup."""
COMPACT_AFTER_BOUNDS = (100, 1_000_000_000)
"""Revisions of deltas after a full backup before the worker compacts them into a new one (0: never): below 100 a
compaction (a whole database restored and snapshotted) costs more than the events it saves; beyond a billion
(days at etcd's fastest) it never comes."""
MAX_QUEUED_JOBS_BOUND = 1_000_000
"""A queue of a million jobs (about 1 GiB of Redis) is no bound."""
CRON_HORIZON = timedelta(days=366)
"""A schedule must fire at least this often: one that never fires (30 February) stops the scheduler."""

TOP_LEVEL_KEYS = frozenset({
    "backup-dir", "listen", "rotate", "etcd", "redis-url", "backup-timeout", "gzip-level",
    "api-token", "api-tls-cert", "api-tls-key", "retention", "schedule", "skip-unchanged", "drill",
    "allow-stale-member", "s3", "encryption", "deltas", "delta-period", "signing", "allowed-hosts",
    "max-queued-jobs", "etcd-bin", "compact-after-revisions",
}) | frozenset(TOKEN_ENV)
ENCRYPTION_KEYS = frozenset({"recipients", "recipients-file", "identity-file"})
SIGNING_KEYS = frozenset({"key-file", "verify-key"})
S3_KEYS = frozenset({
    "endpoint", "region", "addressing-style", "ca-file", "insecure-skip-verify", "access-key-id",
    "secret-access-key", "session-token", "sse", "kms-key-id", "storage-class", "part-size", "concurrency",
    "presign-downloads",
})
S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
"""S3's bucket naming rules (3 to 63 lowercase letters, digits, dots and hyphens)."""
MAX_PART_SIZE = 5 << 30
RETENTION_KEYS = frozenset({"max-age", "hourly", "daily", "weekly"})
ETCD_KEYS = frozenset({
    "endpoints", "prefix", "timeout", "username", "password",
    "tls-ca", "tls-cert", "tls-key", "tls-ca-file", "tls-cert-file", "tls-key-file",
})


def parse_config(raw: Any, environ: dict[str, str] | os._Environ[str], etcd_credentials: bool = True) -> Config:
    """Validate an already-parsed YAML document. Without `etcd_credentials` (the API apart from its workers: it
    never connects to etcd) etcd's password and TLS files are left out, unread: its pods need not hold them."""
    refuse_placeholders(raw, environ)  # first: a placeholder token would otherwise be just "too short"
    top = Section(raw, "", TOP_LEVEL_KEYS)
    return Config(
        etcd=_parse_etcd(top.require("etcd"), etcd_credentials),
        **_storage(top.get_str("backup-dir", DEFAULT_BACKUP_DIR), top.get_section("s3")),
        listen=top.get_listen("listen", DEFAULT_LISTEN),
        rotate=top.get_int("rotate", DEFAULT_ROTATE, minimum=1),
        redis_url=_redis_url(top.get_str("redis-url", None), environ),
        backup_timeout=top.get_duration("backup-timeout", DEFAULT_BACKUP_TIMEOUT, BACKUP_TIMEOUT_BOUNDS),
        gzip_level=top.get_int("gzip-level", DEFAULT_GZIP_LEVEL, minimum=0, maximum=9),
        **_tokens(top, environ),
        **_api_tls(top.get_str("api-tls-cert", None), top.get_str("api-tls-key", None)),
        retention=_parse_retention(top.get_section("retention")),
        schedule=_schedule(top.get_str("schedule", None)),
        skip_unchanged=top.get_bool("skip-unchanged", False),
        drill=_schedule(top.get_str("drill", None), "drill"),
        allow_stale_member=top.get_bool("allow-stale-member", False),
        encryption=_parse_encryption(top.get_section("encryption")),
        deltas=top.get_bool("deltas", False),
        delta_period=top.get_duration("delta-period", DEFAULT_DELTA_PERIOD, DELTA_PERIOD_BOUNDS),
        compact_after_revisions=_compact_after(top),
        signing=_parse_signing(top.get_section("signing")),
        allowed_hosts=_allowed_hosts(top.get_str_list("allowed-hosts", ())),
        max_queued_jobs=top.get_int("max-queued-jobs", DEFAULT_MAX_QUEUED_JOBS, minimum=1,
                                    maximum=MAX_QUEUED_JOBS_BOUND),
        etcd_bin=_etcd_bin(top.get_str_list("etcd-bin", ()), check_files=etcd_credentials),
    )


def _etcd_bin(paths: list[str], check_files: bool) -> tuple[Path, ...]:
    """etcd-bin: absolute paths of etcd binaries, each an executable file (checked where the drill and restores run,
    the processes that connect to etcd: the API apart from its workers starts no etcd)."""
    for path in paths:
        if not os.path.isabs(path):
            raise ConfigError("etcd-bin", f"expected an absolute path to an etcd binary, got {path[:200]!r}")
        if check_files and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ConfigError("etcd-bin", f"{path[:200]} is not an executable file")
    return tuple(Path(path) for path in paths)


def _compact_after(top: Section) -> int:
    value = top.get_int("compact-after-revisions", DEFAULT_COMPACT_AFTER_REVISIONS, minimum=0,
                        maximum=COMPACT_AFTER_BOUNDS[1])
    if 0 < value < COMPACT_AFTER_BOUNDS[0]:
        raise ConfigError("compact-after-revisions",
                          f"must be 0 (never compact) or at least {COMPACT_AFTER_BOUNDS[0]}, got {value}")
    return value


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
    section = Section(raw, "retention.", RETENTION_KEYS)
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


def _parse_etcd(raw: Any, credentials: bool = True) -> EtcdConfig:
    section = Section(raw, "etcd.", ETCD_KEYS)
    endpoints = section.get_str_list("endpoints", DEFAULT_ENDPOINTS)
    for number, url in enumerate(endpoints, 1):
        if "@" in url:  # USER:PASSWORD@: never quoted (it is a password), never sent (etcd ignores it)
            raise ConfigError("etcd.endpoints", f"endpoint {number} holds a user name or password (USER:PASSWORD@): "
                                                "give them as etcd.username and etcd.password, not in the URL")
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
    if not credentials:  # their types are checked, nothing is read
        for name in ("tls-ca", "tls-cert", "tls-key"):
            section.get_str(name, None), section.get_str(f"{name}-file", None)
        return EtcdConfig(endpoints=tuple(endpoints), prefix=section.get_str("prefix", ""),
                          timeout=section.get_duration("timeout", DEFAULT_ETCD_TIMEOUT, ETCD_TIMEOUT_BOUNDS))
    pems = {name: _etcd_pem(section, name) for name in ("tls-ca", "tls-cert", "tls-key")}
    (ca, ca_file), (cert, cert_file), (key, key_file) = ((pem, path) for _, pem, path, _ in pems.values())
    if key_file is not None:  # read from a file (tls-key-file, or tls-key given a path): a private key's
        check_private_file(pems["tls-key"][0], key_file)
    if (cert is None) != (key is None):
        raise ConfigError("etcd.tls-key" if key is None else "etcd.tls-cert",
                          "tls-cert and tls-key must be given together")
    if ca is not None:
        tls_files.certificates(pems["tls-ca"][0], pems["tls-ca"][3], ca)
    if cert is not None and key is not None:
        (cert_key, _, _, cert_shown), (key_key, _, _, key_shown) = pems["tls-cert"], pems["tls-key"]
        tls_files.check_pair(cert_key, cert_shown, cert, key_key, key_shown, key)
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


def _etcd_pem(section: Section, name: str) -> tuple[str, bytes | None, str | None, str]:
    """etcd's `name` PEM (tls-ca, tls-cert, tls-key) as Section.get_pem reads it: the key it was given as
    (e.g. "etcd.tls-ca-file"), the PEM, its file (None: inline), and how messages show where it came from."""
    pem, path = section.get_pem(name)
    given_as = f"etcd.{name}-file" if section.get_str(f"{name}-file", None) is not None else f"etcd.{name}"
    shown = tls_files.INLINE if path is None else shown_key_path(path)
    if pem is not None:
        refuse_placeholder_content(given_as, shown, pem)
    return given_as, pem, path, shown


def _storage(backup_dir: str, s3_section: Any) -> dict[str, Any]:  # a Path's or an S3Config's keyword
    """backup-dir: a directory, or an s3:// URL with the `s3` section's settings."""
    if not backup_dir.startswith("s3://"):
        if s3_section is not None:
            raise ConfigError("s3", "given, but backup-dir is not an s3://BUCKET/PREFIX URL")
        return {"backup_dir": _backup_dir(backup_dir)}
    bucket, _, prefix = backup_dir.removeprefix("s3://").partition("/")
    if not S3_BUCKET.fullmatch(bucket):
        raise ConfigError("backup-dir", f"{bucket!r} is no S3 bucket name (3-63 lowercase letters, digits, . and -)")
    if "//" in prefix or prefix.startswith("/"):
        raise ConfigError("backup-dir", f"the prefix {prefix!r} has an empty path segment")
    return {"s3": _parse_s3(s3_section or {}, bucket, prefix + ("/" if prefix and not prefix.endswith("/") else ""))}


def _parse_s3(raw: Any, bucket: str, prefix: str) -> S3Config:
    section = Section(raw, "s3.", S3_KEYS)
    endpoint = section.get_str("endpoint", None)
    if endpoint is not None and "@" in endpoint:  # USER:PASSWORD@: never quoted, never sent
        raise ConfigError("s3.endpoint", "holds a user name or password (USER:PASSWORD@): give the keys as "
                                         "s3.access-key-id and s3.secret-access-key (or AWS_ACCESS_KEY_ID and "
                                         "AWS_SECRET_ACCESS_KEY), not in the URL")
    if endpoint is not None and (urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).hostname):
        raise ConfigError("s3.endpoint", f"expected an http:// or https:// URL, got {endpoint!r}")
    style = section.get_str("addressing-style", "auto")
    if style not in ("auto", "path", "virtual"):
        raise ConfigError("s3.addressing-style", f"expected auto, path or virtual, got {style!r}")
    sse, kms_key_id = section.get_str("sse", None), section.get_str("kms-key-id", None)
    if sse not in (None, "AES256", "aws:kms"):
        raise ConfigError("s3.sse", f"expected AES256 or aws:kms, got {sse!r}")
    if kms_key_id is not None and sse != "aws:kms":
        raise ConfigError("s3.kms-key-id", "needs sse: aws:kms")
    ca_file = section.get_str("ca-file", None)
    if ca_file is not None:
        _read_certificates("s3.ca-file", ca_file)
    return S3Config(
        bucket=bucket, prefix=prefix, endpoint=endpoint, region=section.get_str("region", None),
        addressing_style=style, ca_file=None if ca_file is None else Path(ca_file).absolute(),
        insecure_skip_verify=section.get_bool("insecure-skip-verify", False),
        access_key_id=section.get_str("access-key-id", None),
        secret_access_key=section.get_str("secret-access-key", None),
        session_token=section.get_str("session-token", None), sse=sse, kms_key_id=kms_key_id,
        storage_class=section.get_str("storage-class", None),
        part_size=section.get_int("part-size", DEFAULT_PART_SIZE, minimum=MIN_PART_SIZE, maximum=MAX_PART_SIZE),
        concurrency=section.get_int("concurrency", DEFAULT_CONCURRENCY, minimum=1, maximum=64),
        presign_downloads=section.get_bool("presign-downloads", False),
    )


def _parse_encryption(raw: Any) -> EncryptionConfig | None:
    if raw is None:
        return None
    section = Section(raw, "encryption.", ENCRYPTION_KEYS)
    listed = section.get_str_list("recipients", ()) if raw.get("recipients") is not None else []
    recipients = [(f"encryption.recipients[{number}]", text) for number, text in enumerate(listed)]
    recipients_file = section.get_str("recipients-file", None)
    if recipients_file is not None:
        lines = _read_key_file("encryption.recipients-file", recipients_file).splitlines()
        recipients += [(f"encryption.recipients-file line {number}", line) for number, line in enumerate(lines, 1)
                       if line.strip() and not line.lstrip().startswith("#")]
    if not recipients:
        raise ConfigError("encryption.recipients", "give at least one public key (recipients or recipients-file)")
    parsed = []
    for key, text in recipients:
        try:
            parsed.append((key, text, parse_recipient(text)))
        except ValueError as exc:  # a public key: quoting it gives nothing away
            raise ConfigError(key, f"{text.strip()[:80]!r} is {exc}") from None
    identity_file = section.get_str("identity-file", None)
    if identity_file is not None:
        identity_text = _read_key_file("encryption.identity-file", identity_file)
        check_private_file("encryption.identity-file", identity_file)
        try:
            identities = parse_identities(identity_text)
        except ValueError as exc:  # never quoting the file: it is the private key
            raise ConfigError("encryption.identity-file", f"{shown_key_path(identity_file)}: {exc}") from None
        # A backup this identity cannot open could not be verified or drilled: every one would look taken.
        for key, text, recipient in parsed:
            if not identities_open(recipient, identities):
                raise ConfigError(key, f"{text.strip()[:80]!r}: no identity in encryption.identity-file "
                                       f"({shown_key_path(identity_file)}) opens it (another key, or a rotated "
                                       "one?): backups encrypted to it could not be verified")
    return EncryptionConfig(recipients=tuple(text.strip() for _, text in recipients),
                            identity_file=None if identity_file is None else Path(identity_file).absolute())


def _parse_signing(raw: Any) -> SigningConfig | None:
    if raw is None:
        return None
    section = Section(raw, "signing.", SIGNING_KEYS)
    key_file, verify_text = section.get_str("key-file", None), section.get_str("verify-key", None)
    verify_key = None
    if verify_text is not None:
        try:
            verify_key = parse_verify_key(verify_text)
        except BadKey as exc:  # a public key: quoting it gives nothing away
            raise ConfigError("signing.verify-key", f"{verify_text.strip()[:80]!r} is {exc}") from None
    if key_file is not None:
        check_private_file("signing.key-file", key_file)
        try:
            derived = parse_signing_key(_read_key_file("signing.key-file", key_file)).verify_key
        except BadKey as exc:  # never quoting the file: it is the private key
            raise ConfigError("signing.key-file", f"{shown_key_path(key_file)}: {exc}") from None
        if verify_key is not None and derived != verify_key:
            raise ConfigError("signing.verify-key", f"is not the public key of signing.key-file (that is {derived}): "
                                                    "give the pair that `etcd-backup keygen` made")
        verify_key = derived
    if verify_key is None:
        raise ConfigError("signing", "give verify-key (readers), key-file (workers and the delta watcher), or both")
    return SigningConfig(verify_key=verify_key, key_file=None if key_file is None else Path(key_file).absolute())


def _read_key_file(key: str, path: str) -> str:
    """The text of the file at `path` that setting `key` names (a key, certificates, recipients): bounded,
    a regular file (common.config.files), no placeholder."""
    shown = shown_key_path(path)
    data, _ = read_named_file(key, path, MAX_KEY_FILE)
    refuse_placeholder_content(key, shown, data)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ConfigError(key, f"{shown}: not text") from None


def _read_certificates(key: str, path: str) -> None:
    """Refuse a file of certificates (a CA bundle) that cannot be read, or holds none."""
    tls_files.certificates(key, shown_key_path(path), _read_key_file(key, path).encode())


def _backup_dir(value: str) -> Path:
    if not value:
        raise ConfigError("backup-dir", "is empty (it would mean the current directory): give a directory")
    # Absolute: gunicorn's --chdir and daemons must not change which directory is meant.
    return Path(value).absolute()


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
    # Deferred: Redis' client takes a quarter of a second to load, and a config without redis-url (a restore host's)
    # never needs it.
    from redis import connection as redis_connection

    try:
        redis_connection.parse_url(url)  # type: ignore[no-untyped-call]  # what redis.Redis.from_url does
    except ValueError:  # its messages may quote the URL
        return f"not a URL that Redis' client reads: {REDIS_URL_HINT}"
    return None


def _tokens(top: Section, environ: dict[str, str] | os._Environ[str]) -> dict[str, Any]:  # Config's keywords
    """The API tokens (Config's api_token, read_token, ...), each from its key or else its variable (TOKEN_ENV)."""
    taken: dict[str, str] = {}  # key -> token
    for key, variable in TOKEN_ENV.items():
        # A token written but empty is a mistake, not a wish for an open API: refused like a short one.
        value = top.get_str(key, None)
        token = value if value is not None else environ.get(variable) or None
        if token is None:
            continue
        given_as = key if value is not None else variable
        if len(token) < MIN_API_TOKEN_LENGTH:
            raise ConfigError(given_as, f"must be at least {MIN_API_TOKEN_LENGTH} characters long")
        # Two equal tokens would give one the other's rights: a read-token equal to the api-token downloads.
        same = [other for other, taken_token in taken.items() if hmac.compare_digest(token, taken_token)]
        if same:
            raise ConfigError(given_as, f"is the same as {same[0]}: give each token its own value")
        taken[key] = token
    return {key.replace("-", "_"): taken.get(key) for key in TOKEN_ENV}


def _allowed_hosts(entries: list[str]) -> tuple[str, ...]:
    """Each entry a `host` or `host:port` as a browser writes it in Host (no scheme, no path, no wildcard)."""
    for entry in entries:
        try:
            split_host(entry)
        except ValueError as exc:
            shown = repr(entry) if len(entry) <= 80 else f"a {len(entry)}-character entry"
            raise ConfigError("allowed-hosts", f"{shown} is not a host or host:port (e.g. backup.example.com "
                              f"or backup.example.com:8443): {str(exc).partition(':')[0]}") from None
    return tuple(entry.lower() for entry in entries)


def _api_tls(cert: str | None, key: str | None) -> dict[str, Any]:  # api_tls_cert and api_tls_key, as Paths
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        missing = "api-tls-cert" if cert is None else "api-tls-key"
        raise ConfigError(missing, "api-tls-cert and api-tls-key go together")
    files, pems = {}, {}
    for name, value in (("api-tls-cert", cert), ("api-tls-key", key)):
        path = Path(value).absolute()
        if name == "api-tls-key":
            check_private_file(name, value)
        pems[name] = _read_key_file(name, value).encode()
        files[name.replace("-", "_")] = path
    tls_files.check_pair("api-tls-cert", shown_key_path(cert), pems["api-tls-cert"],
                         "api-tls-key", shown_key_path(key), pems["api-tls-key"])
    return files
