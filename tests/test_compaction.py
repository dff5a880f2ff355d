"""Compacted backups (worker.compact): a full backup and its deltas made into a new full backup by the worker, so
that a restore applies few deltas. Against a real etcd of the test's own (its history is compared at old revisions:
no other test may compact it) and a real Redis; with signing on, as the compacted backups must be authenticated."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from rq.job import JobStatus

from common import backups, retention
from common.config import RetentionConfig, next_fire
from common.deltas import DeltaName, decode_delta
from common.metadata import BackupMetadata
from common.present import count
from common.storage import BackupStore
from harness.cli import etcd_backup
from harness.in_process import Service
from harness.keys import signing
from harness.processes import wait_until
from harness.report import Report
from harness.servers import EtcdServer, etcdctl
from harness.writer import current_revision
from scheduler.cron import COMPACTION_CHECK, BackupScheduler, run_compaction_tick
from tests.test_deltas import wait_stored, watcher
from worker.compact import BACKOFF_KEY, BACKOFF_SECONDS
from worker.drill import run_drill

pytestmark = pytest.mark.xdist_group("point-in-time")
COMPACT_AFTER = 100
KEYS = 20
VALUE_BYTES = 2048
"""A steady keyset overwritten with 2 KB values: each round of writes adds ~300 KB of history to etcd's database,
and nothing to a compacted backup's."""

KeyValue = tuple[bytes, int, int, int, int]
"""A key's value, create revision, mod revision, version and lease."""


def kvs(endpoint: str, revision: int | None = None) -> dict[bytes, KeyValue]:
    """Every key of the etcd at `endpoint` (at `revision`), with all etcd keeps of it."""
    args = ["get", "", "--prefix", "-w", "json", *([f"--rev={revision}"] if revision is not None else [])]
    answer = json.loads(etcdctl(*args, endpoint=endpoint).stdout)
    return {base64.b64decode(kv["key"]): (base64.b64decode(kv.get("value", "")), int(kv["create_revision"]),
                                          int(kv["mod_revision"]), int(kv["version"]), int(kv.get("lease", 0)))
            for kv in answer.get("kvs", [])}


def served(data_dir: Path, name: str = "default", peer_url: str | None = None) -> dict[bytes, KeyValue]:
    server = EtcdServer(data_dir, name=name)
    server.start()
    try:
        return kvs(server.url)
    finally:
        server.stop()


def write_round(client: Any, round_: int, revoke: Any | None, steps: int = 140) -> Any:
    """About `steps` + 10 revisions: overwrites of the steady keyset, deletes and puts back, a txn of several puts,
    keys put with a new lease (an hour's TTL), and the previous round's lease revoked (its keys deleted). Return
    the lease."""
    lease = client.lease(3600)
    for number in range(3):
        client.put(f"/leased/{round_}/{number}", f"leased {round_}", lease=lease)
    for step in range(steps):
        key = f"/steady/{step % KEYS:02d}"
        if step % 23 == 5:
            client.delete(key)
        elif step % 31 == 7:
            client.transaction(compare=[], success=[client.transactions.put(f"/txn/{round_}/{n}", f"t{step}")
                                                    for n in range(3)], failure=[])
        else:
            client.put(key, f"{round_}.{step}.".ljust(VALUE_BYTES, "x"))
    if revoke is not None:
        revoke.revoke()
    return lease


def compact(service: Service, connection: redis.Redis) -> dict[str, Any] | None:
    """The scheduler's compaction tick; the result of the compaction a worker ran if it queued one, else None."""
    job = run_compaction_tick(service.config, connection, datetime.now(UTC), "test")
    if job is None:
        return None
    wait_until(lambda: job.get_status(refresh=True) in (JobStatus.FINISHED, JobStatus.FAILED), 120,
               "the compaction job")
    assert job.get_status() == JobStatus.FINISHED, job.latest_result()
    result: dict[str, Any] = job.return_value()  # type: ignore[assignment]
    return result


def events_between(store: BackupStore, after: int, upto: int) -> int:
    """The events the stored deltas hold for revisions `after`+1..`upto` (each revision once)."""
    seen: dict[int, int] = {}
    for name in store.list_deltas():
        for revision in decode_delta(name, store.read_delta(name) or b"").revisions:
            if after < revision.number <= upto:
                seen[revision.number] = len(revision.events)
    return sum(seen.values())


def equals_etcd_at_its_revision(tmp_path: Path, service: Service, own_etcd: EtcdServer, name: str,
                                metadata: BackupMetadata) -> bool:
    """Whether backup `name`, opened as an operator would (tar xzf + etcdctl snapshot restore), serves what etcd held
    at its revision, key for key (value, create/mod revision, version, lease)."""
    unpacked = tmp_path / f"unpacked-{name}"
    unpacked.mkdir()
    subprocess.run(["tar", "xzf", str(service.config.backup_dir / name), "-C", str(unpacked)], check=True)
    restored = EtcdServer(tmp_path / f"etcdctl-{name}", name="restored")
    etcdctl("snapshot", "restore", str(unpacked / backups.member_name(name)), f"--data-dir={restored.data_dir}",
            f"--name={restored.name}", f"--initial-cluster={restored.name}={restored.peer_url}",
            f"--initial-advertise-peer-urls={restored.peer_url}")
    expected = kvs(own_etcd.url, metadata.revision)
    return served(restored.data_dir, "restored") == expected and len(expected) == metadata.key_count


@pytest.mark.slow
def test_compacted_backups_equal_etcd_at_their_revision_and_bound_what_a_restore_applies(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    service = make_service(etcd_overrides={"endpoints": [own_etcd.url]}, signing=signing(tmp_path), deltas=True,
                           delta_period="200ms", compact_after_revisions=COMPACT_AFTER, rotate=2)
    config_file, store, client = tmp_path / "config.yml", service.store, own_etcd.client()
    lease = write_round(client, 0, None)
    base = service.client.post("/api/v1/backup").get_json()["filename"]
    base_metadata = store.read_metadata(base)
    assert base_metadata is not None

    compacted: list[str] = []
    with watcher(service.config, redis_conn):
        for round_ in (1, 2):
            lease = write_round(client, round_, lease)
            wait_stored(redis_conn, current_revision(own_etcd.url))
            result = compact(service, redis_conn)
            assert result is not None and result["backup"] is not None, (result, store.list_backups())
            compacted.append(result["backup"])
        write_round(client, 3, lease, steps=COMPACT_AFTER // 2)
        end = current_revision(own_etcd.url)
        wait_stored(redis_conn, end)
        assert compact(service, redis_conn) is None  # fewer than COMPACT_AFTER revisions since the last: not due

    first, second = (store.read_metadata(name) for name in compacted)
    assert first is not None and second is not None
    assert all(backups.is_compacted(name) for name in compacted) and compacted[0] < compacted[1]
    assert first.compacted_from == base and second.compacted_from == compacted[0]
    assert first.compacted_revisions == [base_metadata.revision + 1, first.revision] \
        and first.revision == first.revision_at_end
    assert first.signature is not None and second.signature is not None  # authenticated like any backup
    # The plain list shows them (a client sees backups); the detail says which are compacted.
    assert service.client.get("/api/v1/backup").get_json() == [base, *compacted]
    detail = {entry["filename"]: entry for entry in service.client.get("/api/v1/backup?detail=true").get_json()}
    assert detail[compacted[1]]["compacted_from"] == compacted[0] and "compacted_from" not in detail[base]

    # Each compacted backup is etcd at its revision, key for key (value, create/mod revision, version, lease),
    # opened as an operator would: tar xzf + etcdctl snapshot restore.
    for name, metadata in zip(compacted, (first, second), strict=True):
        assert equals_etcd_at_its_revision(tmp_path, service, own_etcd, name, metadata), name
    # Its size does not grow with the history: a round of overwrites adds ~300 KB to etcd, nothing to it.
    history = 140 * VALUE_BYTES
    assert second.db_size < first.db_size + history // 3, (first.db_size, second.db_size)

    # Restores on both sides of each compaction point: equal to etcd there, and applying only the deltas after the
    # nearest backup below the target (the compacted one, once past it).
    targets = {"between the backup and the first compaction": (base_metadata.revision + first.revision) // 2,
               "the first compaction's revision": first.revision,
               "just after it": first.revision + 1,
               "between the compactions": (first.revision + second.revision) // 2,
               "past the second compaction": end}
    applied = {}
    for label, target in targets.items():
        starts = max((metadata for metadata in (base_metadata, first, second) if metadata.revision <= target),
                     key=lambda metadata: metadata.revision)
        data_dir = tmp_path / f"restored-{target}"
        done = etcd_backup("restore", "--config", str(config_file), "--to-revision", str(target),
                           "--data-dir", str(data_dir), timeout=180)
        assert done.returncode == 0, done.stderr
        expected_events = events_between(store, starts.revision, target)
        said = f"applied {count(expected_events, 'event')} of"
        assert f"{starts.filename}: " in done.stdout and said in done.stdout, \
            (label, starts.filename, expected_events, done.stdout)
        assert served(data_dir) == kvs(own_etcd.url, target), label
        applied[label] = expected_events
    assert applied["past the second compaction"] < events_between(store, base_metadata.revision, end) / 2

    # The drill drills the newest backup, a compacted one here, and checks it against etcd.
    drilled = run_drill(service.config, redis_conn)
    assert drilled.backup == compacted[1] and drilled.passed, drilled

    # A planted compacted backup (our own newest, copied under a later name: its signature names the other) is
    # never listed, and never a restore's start.
    later = backups.backup_name(datetime.now(UTC) - timedelta(seconds=1), compacted=True)
    raw = json.loads(service.peek(backups.metadata_name(compacted[1])) or b"{}")
    service.plant(backups.metadata_name(later), json.dumps({**raw, "filename": later,
                                                            "started": backups.backup_time(later).isoformat()
                                                            }).encode())  # type: ignore[union-attr]
    service.plant(later, service.peek(compacted[1]) or b"")
    assert later not in service.client.get("/api/v1/backup").get_json()
    done = etcd_backup("restore", "--config", str(config_file), "--to-revision", str(end),
                       "--data-dir", str(tmp_path / "restored-planted"), timeout=180)
    assert done.returncode == 0 and f"{compacted[1]}: " in done.stdout and later not in done.stdout, done.stdout
    report(f"history of {end} revisions (overwrites, deletes, txns, leases granted and revoked), a full backup at "
           f"{base_metadata.revision}, two compaction jobs (compact-after-revisions {COMPACT_AFTER}); restores "
           f"to {sorted(targets.values())}; a compacted backup copied under a later name (planted)",
           f"compacted at {first.revision} and {second.revision}, signed, database {first.db_size} then "
           f"{second.db_size} bytes (etcd's own grew by ~{history} a round); each restore equals etcd there key for "
           f"key (value, create/mod revision, version, lease), also tar xzf + etcdctl snapshot restore; events "
           f"applied {applied}; the planted copy unlisted and unused")


def test_the_scheduler_looks_every_10_seconds_when_deltas_and_compaction_are_on(
        make_service: Callable[..., Service], redis_conn: redis.Redis) -> None:
    now = datetime.now(UTC)
    first = next_fire(COMPACTION_CHECK, now)
    assert timedelta(0) < first - now <= timedelta(seconds=10) \
        and next_fire(COMPACTION_CHECK, first) - first == timedelta(seconds=10)
    ticks = {service.config.compact_after_revisions: [tick.func_name for tick in
                                                      BackupScheduler(service.config, redis_conn)._cron_jobs]
             for service in (make_service(worker=False, deltas=True), make_service(
                 worker=False, deltas=True, compact_after_revisions=0))}
    assert ticks == {100_000: ["worker.jobs.compact_backups"], 0: []}


def test_a_compaction_that_cannot_be_made_holds_the_next_off_and_says_why(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis) -> None:
    """A damaged delta right after the newest backup: the compaction restores nothing, says why, and the scheduler
    queues none for BACKOFF_SECONDS (rather than read every delta again every 10 seconds)."""
    service = make_service(deltas=True, compact_after_revisions=100)
    base = service.store.read_metadata(service.client.post("/api/v1/backup").get_json()["filename"])
    assert base is not None
    when = datetime.now(UTC).replace(microsecond=0)
    damaged = str(DeltaName(base.revision + 1, base.revision + 500, when, when, False))
    service.plant(damaged, b"not a delta")
    redis_conn.delete(BACKOFF_KEY)
    result = compact(service, redis_conn)
    assert result is not None and result["backup"] is None and "break at revision" in result["reason"], result
    assert redis_conn.ttl(BACKOFF_KEY) > BACKOFF_SECONDS - 60
    assert run_compaction_tick(service.config, redis_conn, datetime.now(UTC), "test") is None
    redis_conn.delete(BACKOFF_KEY)


def test_retention_counts_compacted_backups_apart() -> None:
    """rotate 2 keeps the two newest backups taken from etcd however many compacted ones come after them, and the
    compacted ones newer than the oldest kept; none older."""
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    real = [backups.backup_name(now - timedelta(minutes=minutes)) for minutes in (50, 30, 10)]
    compacted = [backups.backup_name(now - timedelta(minutes=minutes), compacted=True)
                 for minutes in (40, 35, 20, 15, 5, 1)]
    decisions = {decision.name: decision for decision in retention.plan([*real, *compacted], now, 2, None)}
    assert [name for name in real if decisions[name].keep] == real[1:]
    assert [name for name in compacted if decisions[name].keep] == compacted[2:]
    assert "older than" in decisions[compacted[0]].reason
    # With a tiered policy too: the compacted ones never take a real backup's place.
    tiered = retention.plan([*real, *compacted], now, 2, RetentionConfig(max_age=3600))
    assert [decision.name for decision in tiered if decision.keep and not backups.is_compacted(decision.name)] \
        == real[:0:-1]
