"""Restore without the service (issue 27): `etcd-backup restore --config C latest` and `verify --config C latest` read
the config's store directly, and `verify`/`restore s3://BUCKET/KEY` read one object, with the config's S3 settings
or boto3's own chain (AWS_* variables). The service's API and workers are not running while they do: the config they
are given is a restore host's, with no redis-url, and the worker is stopped. `latest` without --config asks the
service, as `list` does."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from harness.cli import etcd_backup
from harness.files import write_config
from harness.in_process import Service, served_over_http
from harness.keys import encryption, signing
from harness.report import Report
from harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server
from harness.servers import EtcdServer
from harness.writer import current_revision, keys_at
from tests.test_deltas import restored, wait_stored, watcher

pytestmark = pytest.mark.xdist_group("point-in-time")  # restores apply deltas in /dev/shm, as tests/test_deltas.py's
ONE_AS_MANY = re.compile(r"\b1 (deltas|events|backups|user keys|keys)\b")
""""1 deltas": a count of one said in the plural."""


def put_keys(etcd: EtcdServer, prefix: str, count: int, start: int = 0) -> None:
    """Put `prefix`key-N = value-N for N from `start`, one revision each."""
    client = etcd.client()
    try:
        for number in range(start, start + count):
            client.put(f"{prefix}key-{number}", f"value-{number}")
    finally:
        client.close()


def deltas_after_a_backup(service: Service, etcd: EtcdServer, connection: redis.Redis, prefix: str,
                          before: int = 5, after: int = 7) -> tuple[str, int]:
    """A full backup after `before` keys, then `after` more keys stored as deltas by the watcher (a thread, stopped
    again); the backup's name and the revision the deltas end at."""
    put_keys(etcd, prefix, before)
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    with watcher(service.config, connection):
        put_keys(etcd, prefix, after, start=before)
        end = current_revision(etcd.url)
        wait_stored(connection, end)
    return name, end


def restore_host_config(path: Path, service: Service, **more: Any) -> Path:
    """The config a restore host holds: the service's store (and its S3 settings), etcd's endpoints, `more`; no
    Redis: nothing of the service is asked."""
    config = service.config
    document: dict[str, Any] = {"etcd": {"endpoints": list(config.etcd.endpoints)}, **more}
    if config.s3 is not None:
        s3 = config.s3
        document |= {"backup-dir": s3.url, "s3": {"endpoint": s3.endpoint, "region": s3.region,
                                                  "addressing-style": s3.addressing_style,
                                                  "access-key-id": s3.access_key_id,
                                                  "secret-access-key": s3.secret_access_key}}
    else:
        document["backup-dir"] = str(config.backup_dir)
    return write_config(path, document)


def test_restore_latest_from_a_bucket_with_the_service_down(
        s3_service: Callable[..., Service], seaweedfs: S3Server, etcd: EtcdServer, redis_conn: redis.Redis,
        tmp_path: Path, report: Report) -> None:
    """The newest backup, then the deltas after it to the newest revision stored: etcd's keys at that revision."""
    service = s3_service(delta_period="200ms")
    prefix = f"/latest-{tmp_path.name}/"
    backup, end = deltas_after_a_backup(service, etcd, redis_conn, prefix)
    service.stop_worker()
    put_keys(etcd, prefix, 3, start=100)  # after the last delta: in no backup, so not restored
    config = restore_host_config(tmp_path / "restore-host.yml", service)
    data_dir = tmp_path / "restored"

    done = etcd_backup("restore", "--config", str(config), "latest", "--data-dir", str(data_dir), timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and not ONE_AS_MANY.search(done.stdout), done
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"latest in {service.config.s3.url}") and f": {backup} (revision " in first \
        and f"to revision {end} (" in first, done.stdout
    expected = keys_at(etcd.url, prefix, revision=end)
    assert len(expected) == 12 and restored(data_dir, prefix) == expected

    verified = etcd_backup("verify", "--config", str(config), "latest", timeout=120)
    assert verified.returncode == 0 and verified.stdout.startswith(f"{backup} in {service.config.s3.url}"), verified
    report("`etcd-backup restore --config C latest` on SeaweedFS, API and worker stopped, a config without Redis",
           f"exit 0, stderr empty, \"{first}\"; the restored keys equal etcd's at revision {end} (12 keys); "
           f"verify --config C latest: {verified.stdout.strip()[:120]}")


def test_verify_and_restore_an_s3_object_with_and_without_the_config(
        s3_service: Callable[..., Service], seaweedfs: S3Server, etcd: EtcdServer, tmp_path: Path,
        report: Report) -> None:
    service = s3_service()
    prefix = f"/s3-object-{tmp_path.name}/"
    put_keys(etcd, prefix, 4)
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    expected = keys_at(etcd.url, prefix)
    service.stop_worker()
    s3 = service.config.s3
    assert s3 is not None
    url = f"s3://{s3.bucket}/{s3.prefix}{name}"
    config = restore_host_config(tmp_path / "restore-host.yml", service)
    # No config: boto3's default chain, as an operator's shell has it.
    aws = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": seaweedfs.endpoint,
           "AWS_DEFAULT_REGION": "us-east-1"}

    by_chain = etcd_backup("verify", url, env=aws, timeout=120)
    assert by_chain.returncode == 0 and by_chain.stderr == "", by_chain
    assert by_chain.stdout.startswith(f"{name} in s3://{s3.bucket}/{s3.prefix} at {seaweedfs.endpoint} (signature not "
                                      "checked: no --config): good: revision"), by_chain.stdout  # AWS_ENDPOINT_URL's
    by_config = etcd_backup("verify", "--config", str(config), url, timeout=120)
    assert by_config.returncode == 0 and ": good: revision" in by_config.stdout, by_config

    data_dir = tmp_path / "restored"
    done = etcd_backup("restore", url, "--config", str(config), "--data-dir", str(data_dir), timeout=120)
    assert done.returncode == 0 and done.stderr == "", done
    assert restored(data_dir, prefix) == expected and len(expected) == 4

    # Refused, in one line each: no credentials, a bucket that does not exist, a key that is not a backup's, an empty
    # store.
    refusals = {
        "no bucket": (etcd_backup("verify", f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/{name}", env=aws), 1,
                      "there is no bucket"),
        "not a backup": (etcd_backup("verify", f"s3://{s3.bucket}/{s3.prefix}{name}.json", env=aws), 2,
                         "is not a backup's key"),
        "gone": (etcd_backup("verify", f"s3://{s3.bucket}/{s3.prefix}snapshot-20000101_000000.tar.gz", env=aws), 1,
                 "no backup snapshot-20000101_000000.tar.gz in"),
    }
    empty = write_config(tmp_path / "empty.yml", {"etcd": {"endpoints": [etcd.url]},
                                                  **seaweedfs.settings(*seaweedfs.place())})
    refusals["empty store"] = (etcd_backup("restore", "--config", str(empty), "latest", "--data-dir",
                                           str(tmp_path / "nothing")), 1, "no backup in s3://")
    for case, (refused, status, says) in refusals.items():
        assert refused.returncode == status and says in refused.stderr, (case, refused)
        assert len(refused.stderr.strip().splitlines()) == 1 and refused.stdout == "", (case, refused)
    assert not (tmp_path / "nothing").exists()
    report("`verify`/`restore s3://BUCKET/KEY` on SeaweedFS, the service down: with the config's S3 settings, and "
           "without a config (AWS_* variables, AWS_ENDPOINT_URL)",
           "both verify good, the restore equals etcd's keys; refused in one line: " +
           "; ".join(f"{case}: exit {refused.returncode}, {refused.stderr.strip()!r}"
                     for case, (refused, _, _) in refusals.items()))


def test_restore_latest_of_an_encrypted_local_store_and_through_the_service(
        make_service: Callable[..., Service], etcd: EtcdServer, identity: Any, identity_file: Path,
        tmp_path: Path) -> None:
    """No deltas: the newest backup itself, opened with --identity (the restore host's config holds no identity).
    Without --config, `latest` is the service's newest backup, asked at --url."""
    service = make_service(encryption=encryption(identity))
    prefix = f"/latest-encrypted-{tmp_path.name}/"
    put_keys(etcd, prefix, 3)
    service.client.post("/api/v1/backup")
    put_keys(etcd, prefix, 2, start=3)
    newest = service.client.post("/api/v1/backup").get_json()["filename"]
    assert newest.endswith(".tar.gz.age")
    expected = keys_at(etcd.url, prefix)
    config = restore_host_config(tmp_path / "restore-host.yml", service)

    without = etcd_backup("restore", "--config", str(config), "latest", "--data-dir", str(tmp_path / "refused"))
    assert without.returncode == 1 and "give the identity" in without.stderr, without
    assert not (tmp_path / "refused").exists()
    data_dir = tmp_path / "restored"
    done = etcd_backup("restore", "--config", str(config), "latest", "--identity", str(identity_file),
                       "--data-dir", str(data_dir), timeout=120)
    assert done.returncode == 0 and done.stderr == "", done
    assert done.stdout.startswith(f"latest in {service.store.where}: {newest}, revision "), done.stdout
    assert restored(data_dir, prefix) == expected and len(expected) == 5

    with served_over_http(service) as url:
        asked = etcd_backup("verify", "latest", "--url", url, "--identity", str(identity_file), timeout=120)
        from_service = etcd_backup("restore", "latest", "--identity", str(identity_file), "--data-dir",
                                   str(tmp_path / "from-service"), env={"ETCD_BACKUP_URL": url}, timeout=120)
    assert asked.returncode == 0 and asked.stderr == "", asked
    assert asked.stdout.splitlines()[0] == f"latest: {newest}, the newest backup of {url}", asked.stdout
    assert asked.stdout.splitlines()[1].startswith(f"{url}/api/v1/backup/{newest}: good: revision"), asked.stdout
    assert from_service.returncode == 0 and from_service.stderr == "", from_service
    assert restored(tmp_path / "from-service", prefix) == expected


def backup_and_a_newer_unsigned_copy(service: Service) -> tuple[str, str]:
    """A backup taken, and a copy of it planted unsigned under a name 30 s newer, as a bucket writer could: the
    names of both."""
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    taken = datetime.strptime(name, "snapshot-%Y%m%d_%H%M%S.tar.gz")
    planted = f"snapshot-{taken + timedelta(seconds=30):%Y%m%d_%H%M%S}.tar.gz"
    service.plant(planted, service.read_backup(name))
    return name, planted


def test_with_a_signing_config_latest_and_s3_take_only_the_services_signed_backups(
        s3_service: Callable[..., Service], seaweedfs: S3Server, etcd: EtcdServer, tmp_path: Path,
        report: Report) -> None:
    """Whoever can write to the bucket plants a newer backup (a good snapshot, unsigned): with the config's signing
    verify-key, `latest` is still the service's newest, and the planted one named as s3:// is refused; without the
    config (no key to check with), s3:// reads it as any object."""
    keys = signing(tmp_path)
    service = s3_service(signing=keys)
    put_keys(etcd, f"/signed-{tmp_path.name}/", 2)
    name, planted = backup_and_a_newer_unsigned_copy(service)
    s3 = service.config.s3
    assert s3 is not None
    config = restore_host_config(tmp_path / "restore-host.yml", service, signing={"verify-key": keys["verify-key"]})

    latest = etcd_backup("verify", "--config", str(config), "latest", timeout=120)
    assert latest.returncode == 0 and latest.stdout.startswith(f"{name} in "), latest
    refused = etcd_backup("verify", "--config", str(config), f"s3://{s3.bucket}/{s3.prefix}{planted}", timeout=120)
    assert refused.returncode == 1 and "is not signed by the config's signing key" in refused.stderr, refused
    taken_anyway = etcd_backup("verify", "--config", str(config), "--allow-unsigned",
                               f"s3://{s3.bucket}/{s3.prefix}{planted}", timeout=120)
    assert taken_anyway.returncode == 0 and ": good: revision" in taken_anyway.stdout, taken_anyway
    report("a newer unsigned backup planted in the bucket, a restore host's config with signing.verify-key",
           f"verify --config C latest: {name} (the signed one); verify --config C s3://.../{planted}: exit 1, "
           f"{refused.stderr.strip()!r}; with --allow-unsigned: good")
