"""A full backup with deltas after it, as the recovery tests need one: keys put before the backup and after it, the
delta watcher (a thread) storing the later ones, and what a restore host's config of that store holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from common.recovery_window import STATS_KEY
from harness.files import write_config
from harness.in_process import Service
from harness.servers import EtcdServer
from harness.writer import current_revision, keys_at
from worker.deltas import start_thread_watcher


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
    thread, stop = start_thread_watcher(service.config, connection)
    try:
        put_keys(etcd, prefix, after, start=before)
        end = current_revision(etcd.url)
        deadline = time.monotonic() + 30
        while int(connection.hget(STATS_KEY, "last_revision") or 0) < end:
            assert time.monotonic() < deadline, f"the watcher did not store revision {end}"
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(30)
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


def restored_keys(data_dir: Path, prefix: str) -> dict[bytes, bytes]:
    """The keys under `prefix` of an etcd started on the restored `data_dir` (and stopped again)."""
    server = EtcdServer(data_dir).start()
    try:
        return keys_at(server.url, prefix)
    finally:
        server.stop()
