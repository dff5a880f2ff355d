"""Adversary (adv26): compacted backups (worker.compact), the faster apply (recovery.pitr's hand-written Txn and
reading thread) and etcd-bin (recovery.throwaway.choose_etcd).

Each test is one attack. Six broke the code as it was when written (their docstrings begin "FIXED": what etcd
never held, or what history vanished, and who could cause it) and pass since their fixes; the others guard a promise
that held. Real etcd and real Redis,
on loopback and free ports; each test that compacts has an etcd of its own (its history is read at old
revisions: nothing else may compact it; etcd 3.4's auto-compaction is off by default)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from etcd3 import etcdrpc

from common import backups, retention
from common.config import RetentionConfig
from common.deltas import PUT, DeltaName, Event, Revision, decode_delta, parse_delta_name
from common.metadata import BackupMetadata
from harness.cli import etcd_backup
from harness.in_process import Service
from harness.keys import signing
from harness.servers import EtcdServer, etcdctl
from harness.writer import current_revision
from recovery.pitr import Target, _apply, base_backup, plan_restore
from recovery.throwaway import choose_etcd
from tests.test_compaction import compact, kvs, served
from tests.test_deltas import wait_stored, watcher

pytestmark = pytest.mark.xdist_group("point-in-time")
COMPACT_AFTER = 100  # the least the config takes


def compacting_service(make_service: Callable[..., Service], own_etcd: EtcdServer, tmp_path: Path,
                       **overrides: Any) -> Service:
    """The service as a deployment with compaction runs it: signing on, deltas every 200 ms, rotate 2."""
    settings: dict[str, Any] = {"signing": signing(tmp_path), "deltas": True, "delta_period": "200ms",
                                "compact_after_revisions": COMPACT_AFTER, "rotate": 2, **overrides}
    return make_service(etcd_overrides={"endpoints": [own_etcd.url]}, **settings)


def full_backup(service: Service) -> str:
    answer = service.client.post("/api/v1/backup")
    assert answer.status_code == 200, answer.get_json()
    name: str = answer.get_json()["filename"]
    return name


def unpacked(service: Service, name: str, tmp_path: Path) -> Path:
    """Backup `name` as an operator opens it (tar xzf + etcdctl snapshot restore): the restored data dir."""
    where = tmp_path / f"unpacked-{name}"
    where.mkdir()
    subprocess.run(["tar", "xzf", str(service.config.backup_dir / name), "-C", str(where)], check=True)
    data_dir = tmp_path / f"data-{name}"
    etcdctl("snapshot", "restore", str(where / backups.member_name(name)), f"--data-dir={data_dir}")
    return data_dir


def leases_of(endpoint: str) -> set[int]:
    answer = json.loads(etcdctl("lease", "list", "-w", "json", endpoint=endpoint).stdout)
    return {int(lease.get("ID", lease.get("id"))) for lease in answer.get("leases") or []}


def leases_served(data_dir: Path) -> set[int]:
    server = EtcdServer(data_dir).start()
    try:
        return leases_of(server.url)
    finally:
        server.stop()


def restore_cli(service: Service, tmp_path: Path, target: int,
                label: str = "") -> tuple[subprocess.CompletedProcess[str], Path]:
    data_dir = tmp_path / f"restored-{target}{label}"
    done = etcd_backup("restore", "--config", str(tmp_path / "config.yml"), "--to-revision", str(target),
                       "--data-dir", str(data_dir), timeout=240)
    return done, data_dir


# --- Breaks ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_revision_that_deletes_more_than_128_keys_is_restored_and_compacted(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """FIXED (no attacker needed; any etcd user, e.g. Kubernetes itself): one revision can hold more events than
    etcd takes in one Txn. A lease that expires or is revoked deletes every key attached to it in ONE revision
    (kube-apiserver attaches all Events of a minute to one lease), and a range delete (`etcdctl del --prefix`)
    deletes all its keys in one revision. The apply (recovery.pitr._request_op/txn_request) turns that revision
    into one Txn of one DeleteRange per key; the throwaway etcd runs with etcd's default --max-txn-ops 128 and
    refuses it ("too many operations in txn request"). So no point-in-time restore, no drill, and no compaction
    can pass such a revision: everything after it is unreachable from any backup before it, and the compaction
    is refused (and backed off) forever, so restores keep growing. The history after the revision vanishes for
    every restore until the next full backup."""
    service = compacting_service(make_service, own_etcd, tmp_path)
    client = own_etcd.client()
    client.put("/before", "b")
    full_backup(service)
    with watcher(service.config, redis_conn):
        lease = client.lease(3600)
        for number in range(200):
            client.put(f"/leased/{number:03d}", "v", lease=lease)
        lease.revoke()  # one revision: 200 deletes
        for number in range(150):
            client.put(f"/range/{number:03d}", "r")
        client.delete_prefix("/range/")  # one revision: 150 deletes
        end = int(client.put("/after", "a").header.revision)
        wait_stored(redis_conn, end)
        done, data_dir = restore_cli(service, tmp_path, end)
        result = compact(service, redis_conn)
    assert done.returncode == 0, done.stderr[-2000:]
    assert served(data_dir) == kvs(own_etcd.url, end)
    assert result is not None and result["backup"] is not None, result


@pytest.mark.slow
def test_restore_to_time_never_reaches_a_revision_received_after_that_time(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """FIXED (no attacker needed): `restore --to-time T` promises "the newest revision the watcher had received by
    then". A compacted backup's metadata says `started` = the reached revision's delta's last_seen, which a delta
    name holds ROUNDED DOWN to the second, and recovery.pitr._revision_at counts a backup's `revision` as received
    at its `started`. So for any T between that whole second and the instant the reached revision really came (up
    to ~1 s), the restore reaches the compacted backup's revision: it returns writes made after T (e.g. T just
    before an incident's first write: the restore brings the incident back)."""
    service = compacting_service(make_service, own_etcd, tmp_path)
    client = own_etcd.client()
    client.put("/before", "b")
    full_backup(service)
    with watcher(service.config, redis_conn):
        for number in range(COMPACT_AFTER + 5):
            client.put(f"/filler/{number % 10}", f"f{number}")
        wait_stored(redis_conn, current_revision(own_etcd.url))
        time.sleep(1 - time.time() % 1 + 0.6)  # the last write alone, 0.6 s into a second after all the others
        last = int(client.put("/incident", "the write after T").header.revision)
        wait_stored(redis_conn, last)
        result = compact(service, redis_conn)
    assert result is not None and result["backup"] is not None, result
    store = service.store
    compacted = store.read_metadata(result["backup"])
    assert compacted is not None and compacted.revision == last, (compacted, last)
    seen = {revision.number: revision.seen for name in store.list_deltas()
            for revision in decode_delta(name, store.read_delta(name) or b"").revisions}
    whole_second = float(int(seen[last]))
    assert seen[last] - whole_second > 0.3, seen[last]  # the sleep put it well into its second
    when = datetime.fromtimestamp(whole_second + 0.15, UTC)  # after the second began, before `last` came
    received_by_then = max(number for number, at in seen.items() if at <= when.timestamp())
    assert received_by_then < last
    planned = plan_restore(store, Target(time=when), datetime.now(UTC), [])
    assert planned.revision == received_by_then, (
        f"--to-time {when.isoformat()} planned revision {planned.revision} from {planned.backup} (started "
        f"{compacted.started}); the watcher received revision {last} at "
        f"{datetime.fromtimestamp(seen[last], UTC).isoformat()}, after that time")


@pytest.mark.slow
def test_a_compacted_backup_holds_no_lease_that_etcd_revoked(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """FIXED (no attacker needed): a lease revoked (or expired) in etcd shows in the deltas only as the deletes of
    its keys; the throwaway etcd granted it for the puts (or restored it from the base) and never revokes it. The
    compacted backup's snapshot keeps it, so a restore from it (or `tar xzf` + `etcdctl snapshot restore`) holds
    a lease etcd no longer had at that revision, with its full TTL counted afresh. Each compaction restores the
    last one: such leases are carried from compacted backup to compacted backup for ever (kube-apiserver grants a
    lease a minute for Events: 1,440 a day), and each apply keeps them all alive every 0.5 s on its stream."""
    service = compacting_service(make_service, own_etcd, tmp_path)
    client = own_etcd.client()
    before = client.lease(3600)
    client.put("/leased-before-backup", "x", lease=before)
    full_backup(service)
    with watcher(service.config, redis_conn):
        before.revoke()  # in the base's snapshot; revoked in the deltas
        after = client.lease(3600)
        for number in range(3):
            client.put(f"/leased/{number}", "v", lease=after)
        after.revoke()  # granted in the deltas' puts; revoked there too
        for number in range(COMPACT_AFTER + 5):
            client.put(f"/filler/{number % 10}", f"f{number}")
        end = current_revision(own_etcd.url)
        wait_stored(redis_conn, end)
        result = compact(service, redis_conn)
    assert result is not None and result["backup"] is not None, result
    compacted = service.store.read_metadata(result["backup"])
    assert compacted is not None and compacted.revision == end
    data_dir = unpacked(service, result["backup"], tmp_path)
    live = leases_of(own_etcd.url)  # no lease was granted or revoked after `end`: etcd's leases at `end`
    assert served(data_dir) == kvs(own_etcd.url, end)  # the keys are right ...
    held = leases_served(data_dir)
    assert held == live, (f"the compacted backup at revision {end} holds leases {sorted(map(hex, held - live))} that "
                          f"etcd revoked (etcd holds {sorted(map(hex, live))})")


# --- Guards (attacks that did not break) -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_compacted_backup_equals_etcd_at_its_revision_at_the_edges(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """GUARD: a history whose last revisions stress the compaction at reached-1: a key deleted at exactly the
    reached revision, one at reached-1, a lease revoked at reached-2 (its keys deleted), a key re-created after its
    delete, a Txn of 100 puts, a range delete; the compacted backup equals etcd at its revision key for key
    (value, create/mod revision, version, lease), and restores to it and past it (a key re-created at reached+1,
    a delete at reached+2) start from it and equal etcd. A store writer then edits the compacted backup's metadata
    (a newer revision): signing refuses it, it is unlisted, and a restore falls back to the full backup."""
    service = compacting_service(make_service, own_etcd, tmp_path)
    client = own_etcd.client()
    for key in ("/e/keep", "/e/recreated", "/e/at-reached", "/e/at-reached-1"):
        client.put(key, "first")
    for number in range(10):
        client.put(f"/e/range/{number}", "r")
    base = full_backup(service)
    with watcher(service.config, redis_conn):
        client.delete("/e/recreated")
        client.put("/e/recreated", "again")
        client.transaction(compare=[], success=[client.transactions.put(f"/e/txn/{n:03d}", f"t{n}")
                                                for n in range(100)], failure=[])
        client.delete_prefix("/e/range/")
        for number in range(COMPACT_AFTER):
            client.put(f"/e/filler/{number % 7}", f"f{number}")
        lease = client.lease(3600)
        client.put("/e/leased/1", "l", lease=lease)
        client.put("/e/leased/2", "l", lease=lease)
        kept_lease = client.lease(3600)
        client.put("/e/kept-lease", "k", lease=kept_lease)
        lease.revoke()  # reached-2
        client.delete("/e/at-reached-1")  # reached-1
        client.delete("/e/at-reached")
        reached = current_revision(own_etcd.url)
        wait_stored(redis_conn, reached)
        result = compact(service, redis_conn)
        assert result is not None and result["backup"] is not None, result
        client.put("/e/at-reached", "re-created after the compaction")  # reached+1
        client.delete("/e/keep")  # reached+2
        wait_stored(redis_conn, reached + 2)
    name = result["backup"]
    metadata = service.store.read_metadata(name)
    assert metadata is not None and metadata.revision == reached and metadata.compacted_from == base
    expected = kvs(own_etcd.url, reached)
    assert b"/e/at-reached" not in expected and b"/e/recreated" in expected and b"/e/leased/1" not in expected
    assert served(unpacked(service, name, tmp_path)) == expected and metadata.key_count == len(expected)
    for target in (reached, reached + 1, reached + 2):
        done, data_dir = restore_cli(service, tmp_path, target)
        assert done.returncode == 0 and f"{name}: " in done.stdout, done.stdout + done.stderr
        assert served(data_dir) == kvs(own_etcd.url, target), target

    # A store writer edits the compacted backup's metadata to claim a later revision: refused (signature).
    raw = json.loads(service.peek(backups.metadata_name(name)) or b"{}")
    service.plant(backups.metadata_name(name), json.dumps({**raw, "revision": reached + 2,
                                                           "revision_at_end": reached + 2}).encode())
    assert name not in service.client.get("/api/v1/backup").get_json()
    done, data_dir = restore_cli(service, tmp_path, reached + 2, "-edited")
    assert done.returncode == 0 and f"{base}: " in done.stdout and name not in done.stdout, done.stdout
    assert served(data_dir) == kvs(own_etcd.url, reached + 2)


def test_the_hand_written_txn_applies_edge_values_as_etcd_had_them(empty_etcd: Any) -> None:
    """GUARD (faster apply): a put of an empty value, a lease ID with the top bit set (a client may choose its
    lease IDs: LeaseGrant takes any non-zero int64), a 1 MiB value, and a revision of 128 puts (etcd's most in
    one Txn) apply through the hand-written Txn and land exactly: values, lease IDs, one revision each."""
    head = int(empty_etcd.status.header.revision)
    now = time.time()
    big = bytes(range(256)) * 4096  # 1 MiB
    revisions = [
        Revision(head + 1, now, (Event(PUT, b"/empty", b""),)),
        Revision(head + 2, now, (Event(PUT, b"/negative-lease", b"n", lease=-(2**62), lease_ttl=600),)),
        Revision(head + 3, now, (Event(PUT, b"/big", big),)),
        Revision(head + 4, now, tuple(Event(PUT, f"/many/{n:03d}".encode(), b"m") for n in range(128))),
    ]
    assert _apply(empty_etcd, iter(revisions), head + 4) == 1 + 1 + 1 + 128
    kv = etcdrpc.KVStub(empty_etcd.channel)

    def got(key: bytes) -> Any:
        answer = kv.Range(etcdrpc.RangeRequest(key=key), timeout=10)
        assert len(answer.kvs) == 1, key
        return answer.kvs[0]

    assert got(b"/empty").value == b"" and got(b"/empty").mod_revision == head + 1
    assert got(b"/negative-lease").lease == -(2**62) and got(b"/negative-lease").mod_revision == head + 2
    assert got(b"/big").value == big and got(b"/big").mod_revision == head + 3
    many = kv.Range(etcdrpc.RangeRequest(key=b"/many/", range_end=b"/many0"), timeout=10)
    assert len(many.kvs) == 128 and {item.mod_revision for item in many.kvs} == {head + 4}


def test_retention_with_rotate_1_keeps_the_newest_real_backup_and_the_deltas_after_it() -> None:
    """GUARD (retention): with rotate 1, compacted backups between and after real ones, one named in the future
    (planted by a clock ahead): the newest real backup is always kept, compacted ones older than it go, newer
    ones stay, the future one goes, and the compaction's own prune (protect=) never keeps a real one beyond
    rotate nor drops the newest."""
    now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)

    def name(minutes: int, compacted: bool = False) -> str:
        return backups.backup_name(now - timedelta(minutes=minutes), compacted=compacted)

    real_old, compacted_old, real_new, compacted_new = name(30), name(20, True), name(10), name(5, True)
    future = backups.backup_name(now + timedelta(hours=2), compacted=True)
    names = [real_old, compacted_old, real_new, compacted_new, future]
    for protect in (None, compacted_new):
        for policy in (None, RetentionConfig(max_age=60)):
            kept = {decision.name for decision in retention.plan(names, now, 1, policy, protect) if decision.keep}
            assert real_new in kept and compacted_new in kept, (protect, policy, kept)
            assert compacted_old not in kept and future not in kept, (protect, policy, kept)
            if policy is None:
                assert real_old not in kept


def test_etcd_bin_is_chosen_only_from_the_operators_list_whatever_a_backup_records(tmp_path: Path) -> None:
    """GUARD (etcd-bin): a backup's recorded etcd_version (attacker-controlled in an unsigned store) only picks one
    of the operator's etcd-bin binaries, never a path of its own, whatever its text (a path, a huge version, shell
    metacharacters)."""
    binaries = []
    for version in ("3.4.9", "3.5.17", "3.6.1"):
        path = tmp_path / f"etcd-{version}"
        path.write_text(f"#!/bin/sh\necho 'etcd Version: {version}'\n")
        path.chmod(0o755)
        binaries.append(path)
    chosen = {recorded: choose_etcd(binaries, recorded).path for recorded in (
        "3.5.1", "3.3.0", "99.0.0", "/tmp/evil", "$(touch /tmp/pwned)", "3.5;rm -rf /", "", "x" * 10_000, None)}
    assert set(chosen.values()) <= {str(path) for path in binaries}, chosen
    assert chosen["3.5.1"].endswith("etcd-3.5.17") and chosen["3.3.0"].endswith("etcd-3.4.9")
    assert chosen["99.0.0"].endswith("etcd-3.6.1")


class _NamesStore:
    """A store of names and metadata only (no archive is read): what retention and the choice of a restore's base
    read (common.retention.prune, recovery.pitr.base_backup)."""

    def __init__(self, metadata: dict[str, BackupMetadata], deltas: list[str]) -> None:
        self.metadata, self.deltas = dict(metadata), list(deltas)

    def list_backups(self, now: datetime | None = None) -> list[str]:
        return backups.in_time_order(list(self.metadata), now or datetime.now(UTC))

    def read_metadata(self, name: str) -> BackupMetadata | None:
        return self.metadata.get(name)

    def list_deltas(self) -> list[str]:
        return sorted(self.deltas)

    def delete(self, name: str) -> bool:
        return self.metadata.pop(name, None) is not None

    def delete_delta(self, name: str) -> bool:
        self.deltas.remove(name)
        return True


def test_a_compacted_backup_named_after_a_newer_full_backup_never_hides_it_from_a_restore() -> None:
    """FIXED (race, no attacker; a Redis writer who queues the compaction job at the right moment helps): a
    compaction is planned while full backup B2 is still being written (not listed yet), from the base before it
    (B1, revision 100), and reaches the end of the stored deltas, revision 300, which the watcher received
    (catching up after a restart, or behind a burst) in a second AFTER B2 started at revision 500. The compacted
    backup C is named after that second: after B2, with a lower revision. Then:
    - retention (here the compaction's own prune, rotate 1) keeps C (named after the oldest kept full backup B2),
      removes B1 and every delta up to B2's revision 500 (plan_deltas counts only full backups);
    - recovery.pitr.base_backup walks the names newest first and takes C for every target >= 300, so a restore to
      any revision after B2 (550 here) starts from C and needs deltas 301..500, which are gone: "no delta holds
      revision 301", although B2 and the deltas after it reach it. Every compaction after that also starts from C
      and fails (backed off 10 minutes, for ever), so restores after B2 are refused until a full backup newer
      than C is taken (and the window [B2, that backup) stays unreachable while B2 is kept).
    The state is built here as the race leaves it (names, revisions, the deltas' names); each piece is what the
    worker, the watcher and the compaction write."""
    t0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)

    def metadata(name: str, revision: int, started: datetime, **extra: Any) -> BackupMetadata:
        return BackupMetadata(filename=name, filesize=1, cluster_id="c", member_id="m", endpoint="e",
                              revision=revision, revision_at_end=revision, etcd_version="3.4.0", db_size=1,
                              db_sha256="0" * 64, started=started.isoformat(), duration=1.0, **extra)

    b1, b2 = backups.backup_name(t0), backups.backup_name(t0 + timedelta(minutes=10))
    c = backups.backup_name(t0 + timedelta(minutes=10, seconds=20), compacted=True)

    def delta(first: int, last: int, seen: datetime) -> str:
        return str(DeltaName(first, last, seen, seen, False))

    store = _NamesStore(
        {b1: metadata(b1, 100, t0), b2: metadata(b2, 500, t0 + timedelta(minutes=10)),
         c: metadata(c, 300, t0 + timedelta(minutes=10, seconds=20), compacted_from=b1,
                     compacted_revisions=[101, 300])},
        [delta(101, 300, t0 + timedelta(minutes=10, seconds=20)),
         delta(301, 500, t0 + timedelta(minutes=10, seconds=25)),
         delta(501, 600, t0 + timedelta(minutes=10, seconds=30))])
    now = t0 + timedelta(minutes=11)
    retention.prune(store, now, 1, None, protect=c)  # type: ignore[arg-type]  # the compaction's own prune
    assert b2 in store.metadata  # the newest full backup stays ...
    base, base_metadata = base_backup(store, 550, now)  # type: ignore[arg-type]
    kept_from = min((said.first for name in store.deltas if (said := parse_delta_name(name)) is not None),
                    default=None)
    assert kept_from is not None and kept_from <= base_metadata.revision + 1, (
        f"a restore to revision 550 starts from {base} (revision {base_metadata.revision}), but the deltas kept "
        f"begin at revision {kept_from}: {store.deltas}; {b2} (revision 500) and the deltas after it reach 550")


def due_state(make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis,
              tmp_path: Path) -> tuple[Service, str]:
    """A full backup and COMPACT_AFTER + 5 revisions of deltas after it: a compaction is due."""
    service = compacting_service(make_service, own_etcd, tmp_path)
    client = own_etcd.client()
    client.put("/before", "b")
    base = full_backup(service)
    with watcher(service.config, redis_conn):
        for number in range(COMPACT_AFTER + 5):
            client.put(f"/filler/{number % 10}", f"f{number}")
        wait_stored(redis_conn, current_revision(own_etcd.url))
    return service, base


@pytest.mark.slow
def test_a_flood_of_compaction_jobs_makes_one_compacted_backup_and_deletes_nothing(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """GUARD (Redis writer, e.g. with the API's ACL user, which may push jobs): five compaction jobs queued at once
    behind the scheduler's back. Each is the service's own function with no arguments (the job gate lets it
    run); the first compacts, the others find nothing due: one compacted backup, the full backup and every delta
    kept."""
    from rq.job import JobStatus

    from common.jobs import COMPACT_JOB
    from common.queue import job_queue
    from harness.processes import wait_until

    service, base = due_state(make_service, own_etcd, redis_conn, tmp_path)
    deltas_before = service.store.list_deltas()
    queue = job_queue(redis_conn)
    jobs = [queue.enqueue(COMPACT_JOB) for _ in range(5)]
    wait_until(lambda: all(job.get_status(refresh=True) in (JobStatus.FINISHED, JobStatus.FAILED) for job in jobs),
               180, "the flood of compaction jobs")
    made = [job.return_value() for job in jobs if job.get_status() == JobStatus.FINISHED]
    compacted = [name for name in service.store.list_backups() if backups.is_compacted(name)]
    assert len(compacted) == 1, (compacted, made)
    assert base in service.store.list_backups() and service.store.list_deltas() == deltas_before


def test_a_backoff_key_without_a_ttl_does_not_stop_compactions_for_ever(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """FIXED (minor; a Redis writer with the worker's or scheduler's rights, not the API's): the README says a failed
    compaction "holds the next off for 10 minutes (Redis key etcd-backup:compaction-backoff, with its TTL)". The
    scheduler only asks whether the key exists: set without a TTL (or with a year's), it stops every compaction
    for ever, silently (no error, no status line), and restores go back to applying every revision since the
    last full backup. The delta watcher's lease is the precedent: a lease key without a TTL (or over its own) is
    no watcher's and is taken over; the backoff is not checked the same way."""
    from scheduler.cron import run_compaction_tick
    from worker.compact import BACKOFF_KEY

    service, _ = due_state(make_service, own_etcd, redis_conn, tmp_path)
    redis_conn.set(BACKOFF_KEY, "planted: no TTL")
    job = run_compaction_tick(service.config, redis_conn, datetime.now(UTC), "test")
    assert job is not None, (f"{BACKOFF_KEY} without a TTL (ttl {redis_conn.ttl(BACKOFF_KEY)}) holds every "
                             "compaction off for ever")


@pytest.mark.slow
def test_a_value_production_etcd_took_is_restored_whatever_its_max_request_bytes(
        make_service: Callable[..., Service], redis_conn: redis.Redis, tmp_path: Path) -> None:
    """FIXED (no attacker; a production setting): clusters that store big objects raise etcd's
    --max-request-bytes (default 1.5 MiB; 10 MiB is common advice for large Kubernetes clusters). A put of a
    2 MiB value is then a revision etcd took and the watcher stored, but the throwaway etcd the apply and the
    compaction run (recovery.throwaway: etcd's defaults) refuses its Txn: no point-in-time restore or compaction
    passes that revision (same family as the 128-operation limit: the throwaway's limits are etcd's defaults,
    not production's)."""
    server = EtcdServer(tmp_path / "big-etcd", extra_args=["--max-request-bytes", str(10 << 20)]).start()
    try:
        service = compacting_service(make_service, server, tmp_path)
        client = server.client()
        client.put("/before", "b")
        full_backup(service)
        with watcher(service.config, redis_conn):
            client.put("/big", b"x" * (2 << 20))
            for number in range(COMPACT_AFTER + 5):
                client.put(f"/filler/{number % 10}", f"f{number}")
            end = current_revision(server.url)
            wait_stored(redis_conn, end)
            done, data_dir = restore_cli(service, tmp_path, end)
            result = compact(service, redis_conn)
        assert done.returncode == 0, done.stderr[-2000:]
        assert served(data_dir) == kvs(server.url, end)
        assert result is not None and result["backup"] is not None, result
    finally:
        server.stop()
