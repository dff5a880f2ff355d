"""Adversary (adv-standby): the standby (worker.standby), which applies each delta as it is stored and signs what it
compacts into `snapshot-<time>.compacted.tar.gz`.

Each test is one attack. Those whose docstrings begin "FIXED" broke the code as it was when written (what etcd never
held, or what history vanished, and who could cause it) and pass since their fixes; "GUARD": the promise held
against the attack, and the test keeps it so. Real etcd (each test's own: its history is read at old revisions),
real Redis, the watcher and the standby as the service runs them, signing on (`signing.key-file`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from common.deltas import decode_delta, delta_name, encode_delta, parse_delta_name
from harness.in_process import Service
from harness.processes import wait_until
from harness.servers import EtcdServer
from harness.writer import current_revision
from tests.test_adversary_compaction import compacting_service, full_backup, restore_cli
from tests.test_compaction import kvs, served, write_round
from tests.test_deltas import wait_stored, watcher
from tests.test_standby import compacted, newest_compacted_revision, standby

pytestmark = pytest.mark.xdist_group("point-in-time")
COMPACT_AFTER = 100  # the least the config takes


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path / "etcd").start()
    yield server
    server.stop()


def second_watchers_copy(service: Service, ending_at: int) -> str:
    """Store, as a second watcher whose lease lapsed between its check and its write would (signed: it is the
    service's), one delta holding again the revisions of the stored delta that ends at revision `ending_at` and of
    the one after it; its name."""
    store = service.store
    names = sorted(store.list_deltas(), key=lambda name: parse_delta_name(name) or name)
    ends = [index for index, name in enumerate(names) if (said := parse_delta_name(name)) and said.last == ending_at]
    assert ends and ends[0] + 1 < len(names), (ending_at, names)
    first, second = (decode_delta(name, store.read_delta(name) or b"") for name in names[ends[0]:ends[0] + 2])
    revisions = [*first.revisions, *second.revisions]
    return store.put_delta(str(delta_name(revisions, encrypted=False)), encode_delta(first.previous, revisions))


@pytest.mark.slow
def test_a_second_watchers_agreeing_copy_across_a_compacted_revision_loses_no_history(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """Two watchers (a deployment may run several; a Redis writer who deletes the watcher's lease makes the race)
    can store the same revisions twice, in deltas cut at other places: the project takes one copy when they agree
    (tests/test_deltas.py). The standby compacts exactly at the end of a delta (the batch's last), at revision C;
    the second watcher's copy then holds C's delta and the next one. A restore past C starts from the compacted
    backup and must still reach every revision; the standby must go on compacting."""
    service = compacting_service(make_service, own_etcd, tmp_path)
    client = own_etcd.client()
    lease = write_round(client, 0, None)
    full_backup(service)
    with watcher(service.config, redis_conn):
        with standby(service.config, redis_conn):
            lease = write_round(client, 1, lease)
            wait_stored(redis_conn, current_revision(own_etcd.url))
            wait_until(lambda: bool(compacted(service.store)), 120, "the standby's first compacted backup")
        first_name, first = compacted(service.store)[-1]
        lease = write_round(client, 2, lease)  # deltas after the compacted backup
        wait_stored(redis_conn, current_revision(own_etcd.url))
        copy = second_watchers_copy(service, first.revision)
        past = current_revision(own_etcd.url)
        done, data_dir = restore_cli(service, tmp_path, past)
        assert done.returncode == 0 and f"{first_name}: " in done.stdout, done.stdout + done.stderr
        assert served(data_dir) == kvs(own_etcd.url, past)
        with standby(service.config, redis_conn):
            write_round(client, 3, lease)
            end = current_revision(own_etcd.url)
            wait_stored(redis_conn, end)
            wait_until(lambda: newest_compacted_revision(service.store) > first.revision, 90,
                       f"a compacted backup past {first_name} (revision {first.revision}), with {copy} stored")
    done, data_dir = restore_cli(service, tmp_path, end)
    assert done.returncode == 0, done.stdout + done.stderr
    assert served(data_dir) == kvs(own_etcd.url, end)
