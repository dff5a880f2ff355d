"""The service's settings as typed, immutable objects, with the defaults of the keys left out."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from common.signing import VerifyKey

DEFAULT_BACKUP_DIR = "/etcd-backup/"
DEFAULT_LISTEN = "0.0.0.0:8080"
DEFAULT_ROTATE = 14
DEFAULT_ENDPOINTS = ("http://127.0.0.1:2379",)
DEFAULT_ETCD_TIMEOUT = "2s"
DEFAULT_BACKUP_TIMEOUT = "5m"
DEFAULT_GZIP_LEVEL = 1
DEFAULT_DELTA_PERIOD = "10s"
DEFAULT_COMPACT_AFTER_REVISIONS = 100_000
"""About 100 s of writes at 1,000/s: a restore applies at most that many revisions past the nearest full backup."""
DEFAULT_MAX_QUEUED_JOBS = 100
"""Verify jobs coalesce per backup, backups and drills to one queued each: 100 is room for a check of every
backup of a long retention; each queued job holds about 1 KiB of Redis."""


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


DEFAULT_PART_SIZE = 16 << 20
MIN_PART_SIZE = 5 << 20
"""S3 refuses parts smaller than 5 MiB, but for the last."""
DEFAULT_CONCURRENCY = 2
"""Parts in flight. Two keep a store as fast as gzip fills them (measured on SeaweedFS); each more costs a
part-size buffer of the worker's memory."""


@dataclass(frozen=True)
class S3Config:
    """Where backups go when `backup-dir` is an `s3://BUCKET/PREFIX` URL, and how to reach it (the `s3` section).

    Credentials left out come from boto3's default chain: AWS_* variables, shared files, IRSA, instance roles.
    """

    bucket: str
    prefix: str = ""
    """Empty, or ends in "/": backups are the keys `prefix + snapshot-....tar.gz` (no deeper)."""
    endpoint: str | None = None
    """None: AWS."""
    region: str | None = None
    addressing_style: str = "auto"
    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    sse: str | None = None
    """AES256 or aws:kms."""
    kms_key_id: str | None = None
    storage_class: str | None = None
    part_size: int = DEFAULT_PART_SIZE
    concurrency: int = DEFAULT_CONCURRENCY
    presign_downloads: bool = False
    """A download answers 302 to a presigned URL of the object (valid PRESIGN_SECONDS) instead of passing
    its bytes through the API."""

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class EncryptionConfig:
    """The `encryption` section: backups are age-encrypted to `recipients` (common.encryption)."""

    recipients: tuple[str, ...]
    """Public keys (age1..., ssh-ed25519 ..., ssh-rsa ...), from the section and its recipients-file."""
    identity_file: Path | None = None
    """The private key that opens them: only the verify job and the drill need it. Read when used, so that
    the processes that do not (the API) never hold it; checked at start-up."""


@dataclass(frozen=True)
class SigningConfig:
    """The `signing` section: what the service stores is signed, and only what verify_key accepts is read
    (common.signing, common.storage.authenticated)."""

    verify_key: VerifyKey
    """The public key: from the section's verify-key, or derived from key-file."""
    key_file: Path | None = None
    """The private key: the workers and the delta watcher sign with it. Read when used, so that the processes
    that only read (the API, restore) never hold it; checked at start-up."""


@dataclass(frozen=True)
class Config:
    """The whole service's settings: the keys of the original etcd-backup (cybozu-go/etcd-backup) plus this
    service's own."""

    etcd: EtcdConfig
    backup_dir: Path = Path(DEFAULT_BACKUP_DIR)
    listen: str = DEFAULT_LISTEN
    rotate: int = DEFAULT_ROTATE
    redis_url: str | None = field(default=None, repr=False)
    backup_timeout: float = 300.0
    gzip_level: int = DEFAULT_GZIP_LEVEL
    api_token: str | None = field(default=None, repr=False)
    """Every right: with any token set, every request but /healthz needs `Authorization: Bearer <token>`."""
    read_token: str | None = field(default=None, repr=False)
    """Reads the state (the page, status, metrics, probes, the list, jobs): no backup's content."""
    backup_token: str | None = field(default=None, repr=False)
    """What read_token may, and takes and verifies backups (the POSTs)."""
    download_token: str | None = field(default=None, repr=False)
    """What read_token may, and downloads backups."""
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
    s3: S3Config | None = None
    """Set when `backup-dir` is an s3:// URL: backups then live in that bucket, and backup_dir is unused."""
    encryption: EncryptionConfig | None = None
    """Set: each new backup is encrypted (`...tar.gz.age`); older backups of either kind stay backups."""
    allow_stale_member: bool = False
    """When no member can prove it is current (the quorum is gone), back up the first that answers all the
    same, as a stale backup (common.backups.is_stale) rather than fail."""
    deltas: bool = False
    """The all-in-one runs the delta watcher (worker.deltas) as a thread; `etcd-backup deltas` runs it alone."""
    delta_period: float = 10.0
    """Seconds between two deltas: the recovery point (how much is lost with etcd) is about this."""
    compact_after_revisions: int = DEFAULT_COMPACT_AFTER_REVISIONS
    """With deltas: once the deltas after the newest full backup reach this many revisions past it, a worker
    compacts them into a new full backup (worker.compact), so that a restore applies at most about this many
    revisions' events; 0: never."""
    signing: SigningConfig | None = None
    """Set: backups and deltas are signed, and only signed ones are listed, counted, drilled and restored."""
    allowed_hosts: tuple[str, ...] = ()
    """Host names (`host` or `host:port`, lower case) the API answers besides IP literals and localhost:
    the names clients reach it by (a proxy's public name, a Service's DNS name). See api.edges."""
    max_queued_jobs: int = DEFAULT_MAX_QUEUED_JOBS
    """A POST that would queue a new verify job beyond this many queued jobs is answered 429 (common.queue);
    backups and drills (one queued of each at most) are always queued."""
    etcd_bin: tuple[Path, ...] = ()
    """The etcd binaries the drill and a point-in-time restore may start on a restored backup (the one whose version
    suits the backup's: recovery.throwaway.choose_etcd); empty: `etcd` on the PATH."""

    @property
    def identity_file(self) -> Path | None:
        """The identity this process opens encrypted backups with (encryption.identity-file), if it has one."""
        return self.encryption.identity_file if self.encryption is not None else None

    @property
    def tokens(self) -> dict[str, str]:
        """The API tokens set, by key ("api-token", "read-token", ...; api.auth says what each may do)."""
        given = {"api-token": self.api_token, "read-token": self.read_token, "backup-token": self.backup_token,
                 "download-token": self.download_token}
        return {key: token for key, token in given.items() if token is not None}

    @property
    def open_to_the_network(self) -> bool:
        """Whether the API listens beyond loopback without a token: anyone who reaches it gets every Secret."""
        host, _ = split_listen(self.listen)
        if self.tokens or host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:  # a host name other than localhost
            return True


HOST_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")
"""A DNS name as a URL's host holds it (lower case, no trailing dot): what a browser sends in Host."""


def split_host(text: str) -> tuple[str, int | None]:
    """Split an HTTP Host value, "name", "name:port", "1.2.3.4:port" or "[v6]:port", into its host (lower
    case, IPv6 without brackets) and port (None when absent); ValueError when it is none of these."""
    text = text.lower()
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"not a host or host:port: {text!r}")
        host, port = inside, rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {text!r}") from None
    else:
        host, colon, after = text.partition(":")
        port = after if colon else None
        if not HOST_NAME.fullmatch(host):
            raise ValueError(f"not a host name or IPv4 address: {text!r}")
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected a port in 1-65535 after the host, got {text!r}")
    return host, int(port)


def split_listen(listen: str) -> tuple[str, int]:
    """Split "host:port" (or "[v6]:port") into its parts."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT with a port in 1-65535, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
