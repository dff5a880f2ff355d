"""The standby (worker.standby): a throwaway etcd that applies the deltas as the watcher stores them and stores a
compacted backup every compact-after-revisions revisions. Against a real etcd of the test's own (its history is
compared at old revisions), a real Redis, the watcher and the standby on threads, signing on."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from common import backups
from common.config import Config
from common.metadata import BackupMetadata
from common.present import count
from common.storage import BackupStore
from harness.cli import etcd_backup
from harness.in_process import Service
from harness.keys import signing
from harness.processes import wait_until
from harness.report import Report
from harness.servers import EtcdServer
from harness.writer import current_revision
from scheduler.cron import run_compaction_tick
from tests.test_compaction import equals_etcd_at_its_revision, events_between, kvs, served, write_round
from tests.test_deltas import wait_stored, watcher
from worker.standby import LEASE_KEY, LEASE_TTL, run_standby

pytestmark = pytest.mark.xdist_group("point-in-time")
COMPACT_AFTER = 100


@contextmanager
def standby(config: Config, connection: redis.Redis) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=run_standby, args=(config, connection, stop), name="standby", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive(), "the standby did not stop"


def compacted(store: BackupStore) -> list[tuple[str, BackupMetadata]]:
    """The compacted backups stored, oldest first, with their metadata."""
    found = []
    for name in store.list_backups():
        metadata = store.read_metadata(name)
        if backups.is_compacted(name) and metadata is not None:
            found.append((name, metadata))
    return sorted(found, key=lambda pair: pair[1].revision)


def newest_compacted_revision(store: BackupStore) -> int:
    return max((metadata.revision for _, metadata in compacted(store)), default=0)


@pytest.mark.slow
def test_the_standby_compacts_as_the_deltas_come_and_a_restore_applies_at_most_that_many(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    service = make_service(etcd_overrides={"endpoints": [own_etcd.url]}, signing=signing(tmp_path), deltas=True,
                           delta_period="200ms", compact_after_revisions=COMPACT_AFTER, rotate=2)
    store, client = service.store, own_etcd.client()
    lease = write_round(client, 0, None)
    base = service.client.post("/api/v1/backup").get_json()["filename"]
    base_metadata = store.read_metadata(base)
    assert base_metadata is not None
    # A lease key without a TTL (whoever can write Redis): no standby's, deleted, not waited for for ever.
    redis_conn.set(LEASE_KEY, "planted")
    with watcher(service.config, redis_conn), standby(service.config, redis_conn):
        for round_ in range(1, 5):
            lease = write_round(client, round_, lease)
        end = current_revision(own_etcd.url)
        wait_stored(redis_conn, end)
        wait_until(lambda: end - newest_compacted_revision(store) < COMPACT_AFTER, 120,
                   "the standby to compact up to the last compact-after-revisions")

    made = compacted(store)
    assert len(made) >= 3, made
    previous_name, previous = base, base_metadata
    for name, metadata in made:  # a chain: each made from the one before, its revisions following on
        assert metadata.compacted_from == previous_name and metadata.signature is not None, (name, metadata)
        assert metadata.compacted_revisions == [previous.revision + 1, metadata.revision]
        assert metadata.revision - previous.revision >= COMPACT_AFTER
        assert equals_etcd_at_its_revision(tmp_path, service, own_etcd, name, metadata), name
        previous_name, previous = name, metadata
    # A restore to the newest revision starts from the newest compacted backup and applies fewer than
    # compact-after-revisions revisions' events; it equals etcd there.
    newest_name, newest = made[-1]
    done = etcd_backup("restore", "--config", str(tmp_path / "config.yml"), "--to-revision", str(end),
                       "--data-dir", str(tmp_path / "restored"), timeout=180)
    assert done.returncode == 0, done.stderr
    applied = events_between(store, newest.revision, end)
    assert f"{newest_name}: " in done.stdout and f"applied {count(applied, 'event')} of" in done.stdout, done.stdout
    assert end - newest.revision < COMPACT_AFTER
    assert served(tmp_path / "restored") == kvs(own_etcd.url, end)
    report(f"{end} revisions (overwrites, deletes, txns, leases granted and revoked) written while the watcher and "
           f"the standby ran (compact-after-revisions {COMPACT_AFTER}), its lease key planted without a TTL",
           f"{len(made)} compacted backups at revisions {[metadata.revision for _, metadata in made]}, a chain from "
           f"{base}, each signed and equal to etcd at its revision key for key (tar xzf + etcdctl snapshot restore); "
           f"the restore to {end} started from {newest_name} and applied {applied} events")


@pytest.mark.slow
def test_a_break_in_the_deltas_holds_the_standby_until_a_backup_past_it(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    service = make_service(etcd_overrides={"endpoints": [own_etcd.url]}, signing=signing(tmp_path), deltas=True,
                           delta_period="200ms", compact_after_revisions=COMPACT_AFTER, rotate=2)
    store, client = service.store, own_etcd.client()
    lease = write_round(client, 0, None)
    base = service.client.post("/api/v1/backup").get_json()["filename"]
    with watcher(service.config, redis_conn):
        for round_ in range(1, 4):  # a delta (at least) each
            lease = write_round(client, round_, lease, steps=40)
            wait_stored(redis_conn, current_revision(own_etcd.url))
        # A delta in the middle goes missing: no compacted backup may be made across the hole.
        deltas = store.list_deltas()
        assert len(deltas) >= 3, deltas
        hole = deltas[len(deltas) // 2]
        (service.config.backup_dir / hole).unlink()
        # A compaction is due (the deltas' names reach compact-after-revisions past the backup). While a standby
        # holds its lease the scheduler queues no compaction job, which would compact the same deltas again; a
        # lease key without the standby's TTL is no standby's.
        redis_conn.set(LEASE_KEY, "a standby", px=int(LEASE_TTL * 1000))
        assert run_compaction_tick(service.config, redis_conn, datetime.now(UTC), "test") is None
        redis_conn.set(LEASE_KEY, "planted")
        assert run_compaction_tick(service.config, redis_conn, datetime.now(UTC), "test") is not None
        redis_conn.delete(LEASE_KEY)
        with standby(service.config, redis_conn):
            lease = write_round(client, 4, lease)
            wait_stored(redis_conn, current_revision(own_etcd.url))
            assert compacted(store) == []
            # A backup past the hole: the standby starts again from it, and compacts what comes after.
            after = service.client.post("/api/v1/backup").get_json()["filename"]
            write_round(client, 5, lease)
            end = current_revision(own_etcd.url)
            wait_stored(redis_conn, end)
            wait_until(lambda: bool(compacted(store)), 120, "a compacted backup after the new backup")
    assert [metadata.compacted_from for _, metadata in compacted(store)][0] == after != base
