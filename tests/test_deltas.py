"""Continuous backup: the delta watcher against a real etcd, and point-in-time restore from what it stored."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from common.config import Config
from common.deltas import decode_delta
from common.storage import BackupStore
from harness.cli import etcd_backup
from harness.in_process import Service
from harness.servers import EtcdServer
from harness.writer import ContinuousWriter, current_revision, keys_at
from worker.deltas import STATS_KEY, start_thread_watcher

PERIOD = "200ms"


@contextmanager
def watcher(config: Config, connection: redis.Redis) -> Iterator[None]:
    thread, stop = start_thread_watcher(config, connection)
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def wait_stored(connection: redis.Redis, revision: int, timeout: float = 20) -> None:
    """Wait until the watcher has stored every revision up to `revision`."""
    deadline = time.monotonic() + timeout
    while int(connection.hget(STATS_KEY, "last_revision") or 0) < revision:
        assert time.monotonic() < deadline, f"the watcher did not store revision {revision} in {timeout}s"
        time.sleep(0.05)


def stored_revisions(store: BackupStore, config: Config) -> list[int]:
    """Every revision in every stored delta, in name order (duplicates kept)."""
    return [revision.number for name in store.list_deltas()
            for revision in decode_delta(name, store.read_delta(name) or b"")]


def restored(data_dir: Path, prefix: str) -> dict[bytes, bytes]:
    server = EtcdServer(data_dir).start()
    try:
        return keys_at(server.url, prefix)
    finally:
        server.stop()


def config_path(service: Service, tmp_path: Path) -> Path:
    return tmp_path / "config.yml"  # written by conftest's write_config


def test_restore_to_a_middle_revision_and_to_the_latest(
        make_service_on_backend: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis,
        tmp_path: Path) -> None:
    """Writes, overwrites, deletes, txns and range deletes go on across a full backup; a restore to a revision
    in the middle equals `etcdctl get --rev=R` on the original, key for key; one to the latest equals it now."""
    service = make_service_on_backend(delta_period=PERIOD)
    prefix = f"/pitr-{tmp_path.name}/"
    client = etcd.client()
    writer = ContinuousWriter(client, prefix).start()
    time.sleep(0.3)
    backup = service.client.post("/api/v1/backup").get_json()["filename"]
    with watcher(service.config, redis_conn):
        time.sleep(1.5)
        writer.stop()
        end = current_revision(etcd.url)
        wait_stored(redis_conn, end)
    base = service.store.read_metadata(backup)
    assert base is not None and end - base.revision > 50, (base, end)
    middle = (base.revision + end) // 2
    for target in (middle, end):
        data_dir = tmp_path / f"restored-{target}"
        done = etcd_backup("restore", "--config", str(config_path(service, tmp_path)), "--to-revision", str(target),
                           "--data-dir", str(data_dir), timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"etcd is at revision {target}" in done.stdout and "leases are not restored" in done.stdout
        expected = keys_at(etcd.url, prefix, revision=target)
        assert expected and restored(data_dir, prefix) == expected
