"""The settings a Config runs with, written back as a config file would give them, secrets masked
(`etcd-backup config check` prints them)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from common.config.durations import format_duration
from common.config.schema import Config

MASK = "***"


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
        "backup-dir": str(config.backup_dir) if config.s3 is None else config.s3.url,
        "listen": config.listen,
        "allowed-hosts": list(config.allowed_hosts) or None,  # None: read back as unset (an empty list is refused)
        "rotate": config.rotate,
        "etcd": etcd_section,
        "redis-url": None if config.redis_url is None else _masked_url(config.redis_url),
        "backup-timeout": format_duration(config.backup_timeout),
        "gzip-level": config.gzip_level,
        "api-token": _masked(config.api_token),
        "read-token": _masked(config.read_token),
        "backup-token": _masked(config.backup_token),
        "download-token": _masked(config.download_token),
        "api-tls-cert": None if config.api_tls_cert is None else str(config.api_tls_cert),
        "api-tls-key": None if config.api_tls_key is None else str(config.api_tls_key),
        "retention": None if retention is None else {
            "max-age": None if retention.max_age is None else format_duration(retention.max_age),
            "hourly": retention.hourly, "daily": retention.daily, "weekly": retention.weekly,
        },
        "schedule": config.schedule,
        "skip-unchanged": config.skip_unchanged,
        "drill": config.drill,
        "allow-stale-member": config.allow_stale_member,
        "deltas": config.deltas,
        "delta-period": format_duration(config.delta_period),
        "compact-after-revisions": config.compact_after_revisions,
        "max-queued-jobs": config.max_queued_jobs,
        "etcd-bin": [str(path) for path in config.etcd_bin] or None,  # None: `etcd` on the PATH
        **({} if config.s3 is None else {"s3": _s3_section(config)}),
        **({} if config.encryption is None else {"encryption": {
            "recipients": list(config.encryption.recipients),
            "identity-file": None if config.encryption.identity_file is None else str(config.encryption.identity_file),
        }}),
        **({} if config.signing is None else {"signing": {
            "verify-key": str(config.signing.verify_key),
            "key-file": None if config.signing.key_file is None else str(config.signing.key_file),
            # Not a key: what `config check` shows, to compare with the fingerprint of another host's config.
            "fingerprint": config.signing.verify_key.fingerprint,
        }}),
    }


def _s3_section(config: Config) -> dict[str, Any]:
    s3 = config.s3
    assert s3 is not None
    return {
        "endpoint": s3.endpoint, "region": s3.region, "addressing-style": s3.addressing_style,
        "ca-file": None if s3.ca_file is None else str(s3.ca_file), "insecure-skip-verify": s3.insecure_skip_verify,
        "access-key-id": s3.access_key_id, "secret-access-key": _masked(s3.secret_access_key),
        "session-token": _masked(s3.session_token), "sse": s3.sse, "kms-key-id": s3.kms_key_id,
        "storage-class": s3.storage_class, "part-size": s3.part_size, "concurrency": s3.concurrency,
        "presign-downloads": s3.presign_downloads,
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
