"""Continuous backup: the delta watcher against a real etcd, and point-in-time restore from what it stored."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
import re
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from pyrage import x25519

from common.config import Config
from common.deltas import (
    DELETE,
    MAGIC_2,
    PUT,
    DeltaError,
    DeltaName,
    Event,
    Fingerprint,
    Revision,
    decode_delta,
    delta_name,
    encode_delta,
    fingerprint,
    parse_delta_name,
)
from common.encryption import AGE_MAGIC
from common.storage import BackupStore
from harness.cli import COMMAND, etcd_backup
from harness.in_process import Service
from harness.keys import encryption
from harness.processes import wait_until
from harness.report import Report
from harness.servers import EtcdServer, etcdctl
from harness.writer import ContinuousWriter, current_revision, keys_at
from recovery.pitr import Target, plan_restore
from recovery.restore import RestoreError
from worker.deltas import GAPS_KEY, LEASE_KEY, STATS_KEY, start_thread_watcher
from worker.drill import run_drill

# One xdist process for the point-in-time restores: some look for leftover apply dirs in /dev/shm, which another
# process's restore would have too (tests/test_adversary_deltas.py is in the group).
pytestmark = pytest.mark.xdist_group("point-in-time")
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
            for revision in decode_delta(name, store.read_delta(name) or b"").revisions]


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
        # Deep, as a user's may be: the throwaway etcd's socket sits beside it, and a unix socket's path may
        # not be longer than 107 bytes (recovery.throwaway reaches it through a short one).
        data_dir = tmp_path / ("a-deep-directory-" * 6) / f"restored-{target}"
        data_dir.parent.mkdir(mode=0o700, exist_ok=True)
        done = etcd_backup("restore", "--config", str(config_path(service, tmp_path)), "--to-revision", str(target),
                           "--data-dir", str(data_dir), timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"etcd is at revision {target}" in done.stdout and "leases are kept" in done.stdout
        expected = keys_at(etcd.url, prefix, revision=target)
        assert expected and restored(data_dir, prefix) == expected
    # The in-memory apply dir is gone with it. Restores running beside this test (pytest-xdist, other checkouts)
    # have theirs: each is named on the command line of its etcd or etcdctl, or gone soon (between the two).
    wait_until(lambda: not [memory for memory in Path("/dev/shm").glob("etcd-backup-pitr-*") if not _in_use(memory)],
               10, "no in-memory apply dir left")


def _in_use(path: Path) -> bool:
    """Whether a running process names `path` (or a file in it) on its command line."""
    for process in Path("/proc").iterdir():
        try:
            if process.name.isdigit() and str(path).encode() in (process / "cmdline").read_bytes():
                return True
        except OSError:  # it ended meanwhile
            continue
    return False


def deltas_during_writes(service: Service, etcd: EtcdServer, connection: redis.Redis, prefix: str,
                         seconds: float = 1.2) -> tuple[int, int]:
    """A full backup, then writes for `seconds` with the watcher on; return the backup's revision and the last."""
    writer = ContinuousWriter(etcd.client(), prefix).start()
    backup = service.client.post("/api/v1/backup").get_json()["filename"]
    with watcher(service.config, connection):
        time.sleep(seconds)
        writer.stop()
        end = current_revision(etcd.url)
        wait_stored(connection, end)
    metadata = service.store.read_metadata(backup)
    assert metadata is not None
    return metadata.revision, end


def said_by(name: str) -> DeltaName:
    said = parse_delta_name(name)
    assert said is not None, name
    return said


def held_by_no_other(names: list[str]) -> list[str]:
    """The deltas of `names` whose revisions no other delta holds, in order. Two watchers may store the same
    revisions (one whose lease lapsed under load): the restore then rightly takes an intact copy over a damaged
    one, and damaging a delta that has a copy would stop nothing."""
    said = {name: said_by(name) for name in names}
    return [name for name, mine in said.items() if not any(
        other != name and theirs.first <= mine.last and mine.first <= theirs.last for other, theirs in said.items())]


def alone_in_the_middle(names: list[str]) -> str:
    """The delta nearest the middle of `names`, neither the first nor the last, that no other delta overlaps."""
    inner = [name for name in held_by_no_other(names) if name not in (names[0], names[-1])]
    assert inner, f"every delta between the first and the last shares revisions with another: {names}"
    return min(inner, key=lambda name: abs(names.index(name) - len(names) // 2))


def flip_a_bit(path: Path) -> None:
    """Flip one bit of the stored delta at `path`, from its middle on, as a disk's bit rot would. Deflate can say the
    same bytes more than one way (a back-reference may point at either of two equal runs): a flip there leaves what
    the delta holds unchanged, damages nothing, and the restore rightly uses it (seen in about 1 of 60 deltas of the
    tests' writers). The first flip that changes what the gzip data inflates to, or breaks it, is kept."""
    stored = path.read_bytes()
    held = gzip.decompress(stored)
    for position in range(len(stored) // 2, len(stored)):
        damaged = bytearray(stored)
        damaged[position] ^= 0x01
        try:
            unchanged = gzip.decompress(damaged) == held
        except (OSError, EOFError, zlib.error):  # not gzip data any more
            unchanged = False
        if not unchanged:
            path.write_bytes(bytes(damaged))
            return
    raise AssertionError(f"no bit flipped from the middle of {path.name} on changes it")  # its CRC-32 is there


def test_a_damaged_or_missing_delta_stops_the_restore_at_the_revision_before_it(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    service = make_service(delta_period="100ms")
    base, end = deltas_during_writes(service, etcd, redis_conn, f"/broken-{tmp_path.name}/")
    store, now = service.store, datetime.now(UTC)
    names = store.list_deltas()
    assert len(names) >= 4, names
    victim = alone_in_the_middle(names)
    reach = said_by(victim).first - 1  # the revision before it: what the deltas before it reach
    assert plan_restore(store, Target(revision=end), now, []).revision == end

    # --to-time: the newest revision the watcher had received by then.
    revisions = decode_delta(victim, store.read_delta(victim) or b"").revisions
    assert plan_restore(store, Target(time=datetime.fromtimestamp(revisions[0].seen, UTC)), now, []).revision \
        == max(r.number for r in revisions if r.seen <= revisions[0].seen)

    path = service.config.backup_dir / victim
    flip_a_bit(path)
    with pytest.raises(RestoreError, match=f"{victim}.*reach revision {reach} "):
        plan_restore(store, Target(revision=end), now, [])
    # --to-time past it too: an earlier revision, restored without a word, would lose what came after it.
    with pytest.raises(RestoreError, match=f"cannot reach time .*{victim}.*reach revision {reach} "):
        plan_restore(store, Target(time=now), now, [])
    done = etcd_backup("restore", "--config", str(tmp_path / "config.yml"), "--to-revision", str(end),
                       "--data-dir", str(tmp_path / "refused"))
    assert done.returncode == 1 and f"--to-revision {reach})" in done.stderr, done.stderr
    assert not (tmp_path / "refused").exists()
    refused = done.stderr.strip()

    path.unlink()
    with pytest.raises(RestoreError, match=f"no delta holds revision {reach + 1} .one is missing.*reach "
                                           f"revision {reach} "):
        plan_restore(store, Target(revision=end), now, [])
    with pytest.raises(RestoreError, match=f"no delta holds revision {reach + 1} .one is missing"):
        plan_restore(store, Target(time=now), now, [])
    # Up to the break, it still restores.
    assert plan_restore(store, Target(revision=reach), now, []).revision == reach
    assert base < reach
    report(f"one of {len(names)} deltas with one bit flipped, then deleted; `etcd-backup restore --to-revision` "
           "past it", f"exit 1 before anything is restored, no data dir: \"{refused[:300]}\"; deleted: 'no delta "
           f"holds revision {reach + 1} (one is missing)'; --to-revision {reach} still plans")


def test_a_killed_watcher_resumes_without_a_gap_or_a_duplicate_and_of_two_watchers_one_writes(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, report: Report) -> None:
    """kill -9 mid-batch (events received, not stored), then two watchers at once: every revision after the
    backup is stored exactly once."""
    service = make_service(delta_period="300ms")
    writer = ContinuousWriter(etcd.client(), f"/killed-{tmp_path.name}/").start()
    backup = service.client.post("/api/v1/backup").get_json()["filename"]
    config = str(tmp_path / "config.yml")
    first = subprocess.Popen([COMMAND, "deltas", "--config", config], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(service.store.list_deltas()) >= 2, 20, "two deltas")
        time.sleep(0.15)  # mid-batch: half a period of events received and not stored
    finally:
        first.kill()
        first.wait()
    stored_then = int(redis_conn.hget(STATS_KEY, "last_revision") or 0)
    redis_conn.delete(LEASE_KEY)  # as if its lease had run out (LEASE_TTL), sooner
    second_log = tmp_path / "second.log"
    with second_log.open("w") as log:
        second = subprocess.Popen([COMMAND, "deltas", "--config", config], stderr=log)
    caplog.set_level(logging.INFO, logger="worker.deltas")
    try:
        with watcher(service.config, redis_conn):  # a second watcher, at the same time
            time.sleep(1)
            writer.stop()
            end = current_revision(etcd.url)
            wait_stored(redis_conn, end)
    finally:
        second.terminate()
        second.wait()
    metadata = service.store.read_metadata(backup)
    assert metadata is not None and metadata.revision < stored_then < end
    assert stored_revisions(service.store, service.config) == list(range(metadata.revision + 1, end + 1))
    writers = [bool(re.search("delta watcher: stored", text)) for text in (caplog.text, second_log.read_text())]
    assert sorted(writers) == [False, True], writers
    report("`etcd-backup deltas` killed -9 mid-batch under continuous writes, then a second process and a thread "
           "watcher at once", f"every revision {metadata.revision + 1}..{end} stored exactly once (resumed after "
           f"revision {stored_then}); one of the two watchers wrote, the other waited on the lease")


def compacted_past_the_watcher(service: Service, own: EtcdServer) -> tuple[str, int, int]:
    """A full backup, then writes that no watcher stores, and etcd (`own`: the service's) compacted past them: the
    gap a watcher started next records. Return the backup's name, the first revision missed and the compaction's."""
    client = own.client()
    client.put("/gap/a", "1")
    old = service.client.post("/api/v1/backup").get_json()["filename"]
    missed = client.put("/gap/b", "2").header.revision
    client.put("/gap/c", "3")
    compacted = current_revision(own.url)
    client.compact(compacted)
    return old, missed, compacted


def test_a_compaction_past_the_watcher_is_a_recorded_gap_then_a_full_backup(
        make_service: Callable[..., Service], redis_conn: redis.Redis, tmp_path: Path, report: Report) -> None:
    own = EtcdServer(tmp_path / "etcd").start()  # compacted: not the shared one
    try:
        service = make_service(etcd_overrides={"endpoints": [own.url]}, delta_period="100ms")
        client = own.client()
        old, missed, compacted = compacted_past_the_watcher(service, own)
        with watcher(service.config, redis_conn):
            wait_until(lambda: len(service.store.list_backups()) == 2, 30, "the full backup after the gap")
            end = client.put("/gap/d", "4").header.revision
            wait_stored(redis_conn, end)
        gaps = [json.loads(gap) for gap in redis_conn.lrange(GAPS_KEY, 0, -1)]
        assert [(gap["from"], gap["to"]) for gap in gaps] == [(missed, compacted - 1)]
        assert int(redis_conn.hget(STATS_KEY, "gaps") or 0) == 1
        newer = service.store.read_metadata(service.store.list_backups()[-1])
        assert newer is not None and newer.revision >= compacted and old != newer.filename
        assert plan_restore(service.store, Target(revision=end), datetime.now(UTC), []).backup == newer.filename
        report(f"etcd compacted to revision {compacted} while the watcher was off, its deltas ending at {missed - 1}",
               f"gap {missed}..{compacted - 1} recorded (Redis {GAPS_KEY}, /metrics count 1), a full backup queued "
               f"and taken at revision {newer.revision}, deltas on from it; a restore to {end} starts from it")
    finally:
        own.stop()


def test_two_writers_overlapping_deltas_restore_once_and_disagreeing_copies_are_refused(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    """A lease that lapsed between a watcher's check and its write: a second watcher stored the revisions of two
    deltas again, in one. The restore takes one copy of each revision after checking they agree; copies that
    disagree are refused, naming both deltas."""
    service = make_service(delta_period="100ms")
    prefix = f"/overlap-{tmp_path.name}/"
    _, end = deltas_during_writes(service, etcd, redis_conn, prefix)
    store = service.store
    names = store.list_deltas()
    assert len(names) >= 4, names
    originals = [decode_delta(name, store.read_delta(name) or b"") for name in names[1:3]]
    copied = [revision for delta in originals for revision in delta.revisions]
    overlap = str(delta_name(copied, encrypted=False))
    store.put_delta(overlap, encode_delta(originals[0].previous, copied))
    data_dir = tmp_path / "restored"
    done = etcd_backup("restore", "--config", str(tmp_path / "config.yml"), "--to-revision", str(end),
                       "--data-dir", str(data_dir), timeout=120)
    assert done.returncode == 0, done.stderr
    assert restored(data_dir, prefix) == keys_at(etcd.url, prefix, revision=end)

    # The second writer's copy says another value for one key of one revision: two histories.
    changed = copied[len(copied) // 2]
    forged = Revision(changed.number, changed.seen, (Event(PUT, changed.events[0].key, b"another value"),
                                                     *changed.events[1:]))
    assert store.delete_delta(overlap)
    forged_copy = [forged if revision is changed else revision for revision in copied]
    store.put_delta(overlap, encode_delta(originals[0].previous, forged_copy))
    with pytest.raises(RestoreError, match=f"both hold revision {changed.number}, and disagree") as refused:
        plan_restore(store, Target(revision=end), datetime.now(UTC), [])
    assert overlap in str(refused.value) and any(name in str(refused.value) for name in names[1:3])
    report("a second watcher (lease lapsed) stored the revisions of two deltas again; then one event of its copy "
           "changed", f"restore to {end} equals the original (one copy of each revision applied); the changed copy: "
           f"refused before restoring: \"{str(refused.value)[:200]}...\"")


def test_a_watcher_does_not_store_what_another_already_stored(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    service = make_service(delta_period="100ms")
    deltas_during_writes(service, etcd, redis_conn, f"/fenced-{tmp_path.name}/", seconds=0.3)
    now = current_revision(etcd.url)
    seen = datetime.now(UTC).replace(microsecond=0)
    ahead = str(DeltaName(now + 1, now + 1000, seen, seen, encrypted=False))  # another watcher's, further on
    before = service.store.list_deltas()
    caplog.set_level(logging.INFO, logger="worker.deltas")
    with watcher(service.config, redis_conn):
        wait_until(lambda: "delta watcher: watching" in caplog.text, 20, "the watcher to start")
        service.store.put_delta(ahead, b"planted")
        etcd.client().put(f"/fenced-{tmp_path.name}/after", "x")
        wait_until(lambda: f"another watcher has stored up to revision {now + 1000}" in caplog.text, 20,
                   "the watcher to see the other's delta")
    assert service.store.list_deltas() == sorted([*before, ahead])


def test_deltas_past_etcds_revision_are_said_once_and_nothing_is_stored(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd restored to an earlier revision: the stored deltas reach past it. The watcher stores nothing on top
    (a new history after the old one would restore neither), and says so once, not every retry."""
    monkeypatch.setattr("worker.deltas.RETRY_SECONDS", 0.1)
    service = make_service(delta_period="100ms")
    service.client.post("/api/v1/backup")
    now = current_revision(etcd.url)
    seen = datetime.now(UTC).replace(microsecond=0)
    service.store.put_delta(str(DeltaName(now + 1, now + 500, seen, seen, encrypted=False)), b"another history")
    caplog.set_level(logging.INFO, logger="worker.deltas")
    with watcher(service.config, redis_conn):
        wait_until(lambda: "past etcd's" in caplog.text, 20, "the watcher to say it")
        time.sleep(1)  # ten retries
    said = [record for record in caplog.records if "past etcd's" in record.getMessage()]
    assert len(said) == 1 and said[0].levelname == "ERROR", caplog.text
    assert f"reach revision {now + 500}, past etcd's {now}" in said[0].getMessage()
    assert len(service.store.list_deltas()) == 1


def test_the_lease_is_renewed_when_the_delta_period_outlasts_it(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.deltas.LEASE_TTL", 0.6)
    monkeypatch.setattr("worker.deltas.LEASE_RENEWAL", 0.2)
    service = make_service(delta_period="2s")
    service.client.post("/api/v1/backup")
    caplog.set_level(logging.INFO, logger="worker.deltas")
    with watcher(service.config, redis_conn):
        wait_until(lambda: "delta watcher: watching" in caplog.text, 20, "the watcher to start")
        end = etcd.client().put(f"/renewed-{tmp_path.name}/a", "x").header.revision
        wait_stored(redis_conn, end)
    assert "stopped writing" not in caplog.text and "the lease" not in caplog.text.replace("holding the lease", "")


def test_etcd_restored_to_an_earlier_revision_then_written_past_the_deltas_starts_a_new_history(
        make_service: Callable[..., Service], redis_conn: redis.Redis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, report: Report) -> None:
    """etcd restored from a backup to an earlier revision, then written to more than before: its revisions go
    past the stored deltas with other events. The watcher does not chain them: a gap, a full backup, deltas after
    it; a restore past the reset is either right (from the new backup) or refused."""
    own = EtcdServer(tmp_path / "etcd").start()  # restored: not the shared one
    try:
        service = make_service(etcd_overrides={"endpoints": [own.url]}, delta_period="100ms")
        prefix, config = "/history/", str(tmp_path / "config.yml")
        own.client().put(prefix + "base", "old")
        backup = service.client.post("/api/v1/backup").get_json()["filename"]
        with watcher(service.config, redis_conn):
            for index in range(10):
                own.client().put(f"{prefix}old-{index}", "old")
            old_end = current_revision(own.url)
            wait_stored(redis_conn, old_end)
        old_deltas = service.store.list_deltas()
    finally:
        own.stop()
    done = etcd_backup("restore", "--config", config, str(service.config.backup_dir / backup),
                       "--data-dir", str(tmp_path / "etcd-restored"))
    assert done.returncode == 0, done.stderr
    reset = EtcdServer(tmp_path / "etcd-restored")
    reset.client_port, reset.peer_port = own.client_port, own.peer_port  # the same endpoint, the config unchanged
    reset.start()
    try:
        for index in range(20):  # more than before: etcd's revisions go past the stored deltas
            reset.client().put(f"{prefix}new-{index}", "new")
        assert current_revision(reset.url) > old_end
        caplog.set_level(logging.INFO, logger="worker.deltas")
        with watcher(service.config, redis_conn):
            wait_until(lambda: len(service.store.list_backups()) == 2, 30, "the full backup of the new history")
            end = reset.client().put(prefix + "after", "new").header.revision
            wait_stored(redis_conn, end)
        said = [record for record in caplog.records if "not the one the last delta stored" in record.getMessage()]
        assert len(said) == 1 and said[0].levelname == "ERROR", caplog.text
        newer = service.store.read_metadata(service.store.list_backups()[-1])
        assert newer is not None and newer.revision > old_end
        new_deltas = [parse_delta_name(name) for name in service.store.list_deltas() if name not in old_deltas]
        assert new_deltas and all(said is not None and said.first > newer.revision for said in new_deltas)
        now = datetime.now(UTC)
        assert plan_restore(service.store, Target(revision=end), now, []).backup == newer.filename
        with pytest.raises(RestoreError, match=f"no delta holds revision {old_end + 1}"):
            plan_restore(service.store, Target(revision=old_end + 1), now, [])
        data_dir = tmp_path / "pitr"
        done = etcd_backup("restore", "--config", config, "--to-revision", str(end), "--data-dir", str(data_dir),
                           timeout=120)
        assert done.returncode == 0, done.stderr
        assert restored(data_dir, prefix) == keys_at(reset.url, prefix, revision=end)
        report(f"etcd restored from a backup to an earlier revision, then written past the deltas (which ended at "
               f"{old_end})", f"said once ('{said[0].getMessage()[:90]}...'), a full backup taken at {newer.revision}, "
               f"no delta before it; restore to {end} equals the new etcd, to {old_end + 1}: refused")
    finally:
        reset.stop()


def test_a_delta_of_another_history_is_never_chained(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """A delta stored after the last one, but whose watcher saw another revision before it (Redis forgot the
    fingerprint, say): restore refuses to chain it, and still reaches the revision before it."""
    service = make_service(delta_period="100ms")
    _, end = deltas_during_writes(service, etcd, redis_conn, f"/mixed-{tmp_path.name}/", seconds=0.5)
    seen = time.time()
    other = Revision(end + 1, seen, (Event(PUT, b"/mixed/other", b"x"),))
    previous = Fingerprint(end, bytes(32))  # etcd's revision `end` was another one for this delta's watcher
    planted = str(delta_name([other], encrypted=False))
    service.store.put_delta(planted, encode_delta(previous, [other]))
    with pytest.raises(RestoreError, match=f"{planted} does not follow .*two histories.*to revision {end} at most"):
        plan_restore(service.store, Target(revision=end + 1), datetime.now(UTC), [])
    assert plan_restore(service.store, Target(revision=end), datetime.now(UTC), []).revision == end


def test_hostile_files_named_as_deltas_are_refused_and_nothing_is_lost(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    """In backup-dir, under deltas' names: a symlink, a FIFO, garbage, a file over the size limit, a real delta
    whose name lies about its revisions. Listing skips the first two (no hang on the FIFO); restore past the
    real deltas names each of the others' faults; restore up to them, the window and /metrics still work."""
    service = make_service(delta_period="100ms")
    _, end = deltas_during_writes(service, etcd, redis_conn, f"/hostile-{tmp_path.name}/", seconds=0.5)
    store, directory = service.store, service.config.backup_dir
    real = store.list_deltas()
    seen = datetime.now(UTC).replace(microsecond=0)

    def named(last: int) -> Path:
        return directory / str(DeltaName(end + 1, last, seen, seen, encrypted=False))

    named(end + 1).symlink_to(directory / real[0])
    os.mkfifo(named(end + 2))
    named(end + 3).write_bytes(b"not a delta at all")
    with named(end + 4).open("wb") as oversize:
        oversize.truncate((64 << 20) + 1)
    named(end + 5).write_bytes(directory.joinpath(real[-1]).read_bytes())  # says end+1.., holds others
    assert store.list_deltas() == sorted([*real, *(named(end + n).name for n in (3, 4, 5))])
    assert store.read_delta(named(end + 2).name) is None  # the FIFO: not opened for reading, no hang
    with pytest.raises(RestoreError) as refused:
        plan_restore(store, Target(revision=end + 1), datetime.now(UTC), [])
    for fault in ("not intact gzip data", "larger than 64 MiB", "as its name says"):
        assert fault in str(refused.value)
    assert f"reach revision {end} " in str(refused.value)
    assert plan_restore(store, Target(revision=end), datetime.now(UTC), []).revision == end
    assert service.client.get("/api/v1/recovery-window").status_code == 200
    assert service.client.get("/metrics").status_code == 200
    assert all((directory / name).exists() for name in real)
    report("a symlink, a FIFO, garbage, a 64 MiB + 1 file and a delta under a lying name, all named as the "
           "delta after the last", "symlink and FIFO not listed; restore past them refused: "
           f"\"{str(refused.value)[:240]}...\"; restore to the last real revision, the window and "
           "/metrics answer; every real delta kept")


def test_encrypted_deltas_restore_to_a_time_with_the_identity_only(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        identity: x25519.Identity, identity_file: Path, report: Report) -> None:
    """Encryption on (recipients only, as a worker has): every stored delta is age, not gzip, and opens only
    with the identity; `etcd-backup restore --to-time` without --identity is refused, and with it restores
    exactly `etcdctl get --rev` at the newest revision the watcher had received by that time."""
    service = make_service(delta_period=PERIOD, encryption=encryption(identity))
    prefix = f"/sealed-{tmp_path.name}/"
    base, end = deltas_during_writes(service, etcd, redis_conn, prefix)
    store, names = service.store, service.store.list_deltas()
    assert names and all(name.endswith(".bin.gz.age") for name in names), names
    revisions = []
    for name in names:
        stored = store.read_delta(name) or b""
        assert stored.startswith(AGE_MAGIC), name
        with pytest.raises(DeltaError, match="is encrypted: give the identity"):
            decode_delta(name, stored, [])
        with pytest.raises(DeltaError, match="cannot be decrypted"):
            decode_delta(name, stored, [x25519.Identity.generate()])
        revisions += decode_delta(name, stored, [identity]).revisions
    after_base = sorted({revision.seen for revision in revisions if revision.number > base})
    assert len(after_base) > 2, after_base
    # Between two times the watcher received revisions at: no rounding puts it on either side.
    moment = datetime.fromtimestamp((after_base[len(after_base) // 2] + after_base[len(after_base) // 2 + 1]) / 2,
                                    UTC)
    target = max(revision.number for revision in revisions if revision.seen <= moment.timestamp())
    assert base < target < end

    command = ("restore", "--config", str(tmp_path / "config.yml"), "--to-time", moment.isoformat())
    refused = etcd_backup(*command, "--data-dir", str(tmp_path / "refused"), timeout=120)
    assert refused.returncode == 1 and "give the identity" in refused.stderr, refused.stderr
    with pytest.raises(RestoreError, match=f"cannot reach revision {target}: {names[0]} is encrypted: give the id"):
        plan_restore(store, Target(revision=target), datetime.now(UTC), [])
    assert not (tmp_path / "refused").exists()
    done = etcd_backup(*command, "--identity", str(identity_file), "--data-dir", str(tmp_path / "restored"),
                       timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"etcd is at revision {target}" in done.stdout
    expected = keys_at(etcd.url, prefix, revision=target)
    assert expected and restored(tmp_path / "restored", prefix) == expected
    report(f"encryption on, {len(names)} deltas; `etcd-backup restore --to-time {moment.isoformat()}` without "
           "and with --identity", f"each delta is age-encrypted and opens only with the identity; without it: "
           f"exit 1 ('{refused.stderr.strip()[:160]}'); with it: revision {target}, equal to etcdctl get --rev")


def test_the_drill_restores_a_random_revision_of_the_deltas_and_compares_it_with_etcd(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    """With deltas after the newest backup, the drill also applies them up to a random revision in its throwaway
    etcd and compares every key (value, mod revision) with etcd's at that revision; a damaged delta fails it."""
    service = make_service(delta_period="100ms")
    base, end = deltas_during_writes(service, etcd, redis_conn, f"/drilled-{tmp_path.name}/")
    result = run_drill(service.config, redis_conn)
    assert result.passed, result.reason
    assert result.point_revision is not None and base < result.point_revision <= end, (result, base, end)
    assert re.search(rf"; point in time: revision {result.point_revision} \(random, of \d+-{end}\), [1-9]\d* events? "
                     r"applied; [1-9]\d* user keys? equal to etcd's at that revision$", result.reason), result.reason
    newest = service.store.list_backups()[-1]
    drill = (service.store.read_metadata(newest) or pytest.fail("no metadata")).drill
    assert drill is not None and drill["point_revision"] == result.point_revision

    # Deltas forged by whoever can write to the store: intact, chained (each fingerprint recomputed), each put's
    # value changed. Only the comparison with etcd can tell.
    originals = {name: (service.config.backup_dir / name).read_bytes() for name in service.store.list_deltas()}
    previous: Fingerprint | None = None
    for name, stored in originals.items():
        delta = decode_delta(name, stored)
        forged = [Revision(revision.number, revision.seen, tuple(
            Event(event.kind, event.key, event.value + b"!" if event.kind == PUT else b"")
            for event in revision.events)) for revision in delta.revisions]
        (service.config.backup_dir / name).write_bytes(encode_delta(previous or delta.previous, forged))
        previous = fingerprint(forged[-1].number, forged[-1].events)
    caught = run_drill(service.config, redis_conn)
    # Caught where the forgery shows first: a forged revision the backup holds too (the first delta is not tied
    # to it), else the keys compared with etcd's.
    assert not caught.passed, caught
    assert "does not follow" in caught.reason or ("the restored keys differ from etcd's" in caught.reason
                                                  and "its value differs" in caught.reason), caught
    for name, stored in originals.items():
        (service.config.backup_dir / name).write_bytes(stored)

    victim = held_by_no_other(service.store.list_deltas())[-1]  # the newest delta no other covers
    flip_a_bit(service.config.backup_dir / victim)
    failed = run_drill(service.config, redis_conn)
    assert not failed.passed and victim in failed.reason and failed.point_revision is None, failed
    report("the restore drill with deltas after the newest backup; then with forged deltas; then with one bit "
           "flipped in the last delta",
           f"passed: '{result.reason}'; forged (intact, chained, values changed): failed, '{caught.reason[:160]}'; "
           f"damaged: failed, '{failed.reason[:200]}'")


def leases_of(endpoint: str, prefix: str) -> dict[bytes, int]:
    """Every key under `prefix` and its lease ID (0: none), as `etcdctl get -w json` shows them."""
    answer = json.loads(etcdctl("get", "--prefix", prefix, "-w", "json", endpoint=endpoint).stdout)
    return {base64.b64decode(kv["key"]): int(kv.get("lease", 0)) for kv in answer.get("kvs", [])}


def lease_ttls(endpoint: str) -> dict[int, tuple[int, int]]:
    """Every lease `etcdctl lease list` shows, with its remaining and granted TTL (`etcdctl lease timetolive`)."""
    listed = json.loads(etcdctl("lease", "list", "-w", "json", endpoint=endpoint).stdout).get("leases") or []
    ttls = {}
    for lease in (int(listed_lease["id"]) for listed_lease in listed):
        answer = json.loads(etcdctl("lease", "timetolive", f"{lease:x}", "-w", "json", endpoint=endpoint).stdout)
        ttls[lease] = (int(answer["ttl"]), int(answer["granted-ttl"]))
    return ttls


def restored_leases(data_dir: Path, prefix: str) -> tuple[dict[bytes, int], dict[int, tuple[int, int]]]:
    server = EtcdServer(data_dir).start()
    try:
        return leases_of(server.url, prefix), lease_ttls(server.url)
    finally:
        server.stop()


def test_leased_keys_keep_their_lease_from_the_backup_and_from_the_deltas(
        make_service: Callable[..., Service], redis_conn: redis.Redis, tmp_path: Path, report: Report) -> None:
    """One rule on both paths, etcd's own: a key with a lease in the full backup, and keys put with a lease in the
    deltas (a new lease, the backup's lease again, a lease revoked before the watcher asked its TTL), restored
    to the end by `restore --to-revision` all have their lease IDs, the leases exist with the TTL granted; a
    `restore FILE` of the backup keeps the backup's key's lease; a restore to the revoked lease's put grants it."""
    own = EtcdServer(tmp_path / "etcd").start()  # its leases stay its own: not the shared etcd's
    try:
        service = make_service(etcd_overrides={"endpoints": [own.url]}, delta_period="100ms")
        client, prefix, config = own.client(), "/leased/", str(tmp_path / "config.yml")
        in_backup = client.lease(600)
        client.put(prefix + "in-backup", "b", lease=in_backup)
        client.put(prefix + "plain", "p")
        backup = service.client.post("/api/v1/backup").get_json()["filename"]
        in_delta = client.lease(300)
        client.put(prefix + "in-delta", "d", lease=in_delta)
        client.put(prefix + "in-delta-backup-lease", "o", lease=in_backup)
        gone = client.lease(60)
        gone_put = client.put(prefix + "lease-gone", "g", lease=gone).header.revision
        gone.revoke()  # before the watcher starts, so before it asks: its TTL is unknown to the delta
        end = client.put(prefix + "after", "a").header.revision
        with watcher(service.config, redis_conn):
            wait_stored(redis_conn, end)
        expected = leases_of(own.url, prefix)
    finally:
        own.stop()
    assert expected == {f"{prefix}{key}".encode(): lease for key, lease in (
        ("in-backup", in_backup.id), ("plain", 0), ("in-delta", in_delta.id),
        ("in-delta-backup-lease", in_backup.id), ("after", 0))}, expected
    recorded = {event.key: (event.lease, event.lease_ttl) for name in service.store.list_deltas()
                for revision in decode_delta(name, service.store.read_delta(name) or b"").revisions
                for event in revision.events if event.kind == PUT}
    assert recorded[f"{prefix}in-delta".encode()] == (in_delta.id, 300)
    assert recorded[f"{prefix}in-delta-backup-lease".encode()] == (in_backup.id, 600)
    assert recorded[f"{prefix}lease-gone".encode()] == (gone.id, 0)
    assert recorded[f"{prefix}after".encode()] == (0, 0)

    done = etcd_backup("restore", "--config", config, "--to-revision", str(end), "--data-dir",
                       str(tmp_path / "pitr"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "leases are kept" in done.stdout and "not restored" not in done.stdout, done.stdout
    keys, ttls = restored_leases(tmp_path / "pitr", prefix)
    assert keys == expected
    for lease, granted in ((in_backup.id, 600), (in_delta.id, 300)):
        assert lease in ttls and ttls[lease][1] == granted and 0 < ttls[lease][0] <= granted, (lease, ttls)

    done = etcd_backup("restore", "--config", config, "--to-revision", str(gone_put), "--data-dir",
                       str(tmp_path / "pitr-gone"), timeout=120)
    assert done.returncode == 0, done.stderr

    done = etcd_backup("restore", str(service.config.backup_dir / backup), "--data-dir", str(tmp_path / "plain"))
    assert done.returncode == 0, done.stderr
    keys, ttls = restored_leases(tmp_path / "plain", prefix)
    assert keys == {f"{prefix}in-backup".encode(): in_backup.id, f"{prefix}plain".encode(): 0}
    assert in_backup.id in ttls and ttls[in_backup.id][1] == 600 and 0 < ttls[in_backup.id][0] <= 600, ttls
    report("a key with a lease (600 s) in the full backup; in deltas: a key with a new lease (300 s), one with the "
           "backup's lease, one whose lease was revoked before the watcher asked", "restore --to-revision END: "
           "every key with its lease ID, both leases listed with their granted TTL; to the revoked lease's put: "
           "restored (granted with etcd's shortest TTL); restore FILE: the backup's key keeps its lease")


def test_version_2_and_3_deltas_decode_and_chain_the_lease_outside_the_fingerprint() -> None:
    """A version 3 delta keeps each put's lease and TTL; a version 2 one (no lease fields) still decodes, its puts
    leaseless; the fingerprint ignores leases, so a version 3 delta chains after a version 2 one."""
    seen = time.time()
    leased = Revision(5, seen, (Event(PUT, b"/k", b"v", lease=0x1234, lease_ttl=30), Event(DELETE, b"/d")))
    without = Revision(5, seen, (Event(PUT, b"/k", b"v"), Event(DELETE, b"/d")))
    assert fingerprint(5, leased.events) == fingerprint(5, without.events)
    previous = Fingerprint(4, bytes(32))
    name = str(delta_name([leased], encrypted=False))
    decoded = decode_delta(name, encode_delta(previous, [leased]))
    assert [(event.lease, event.lease_ttl) for event in decoded.revisions[0].events] == [(0x1234, 30), (0, 0)]
    # Version 2, as the watcher wrote it before leases: its MAGIC and the same records without the lease fields.
    body = MAGIC_2 + struct.pack(">Q32s", 4, bytes(32)) + version_2_record(leased)
    old = decode_delta(name, gzip.compress(body + hashlib.sha256(body).digest()))
    assert old.revisions[0].events == leased.events
    assert [(event.lease, event.lease_ttl) for event in old.revisions[0].events] == [(0, 0), (0, 0)]
    after = Revision(6, seen, (Event(PUT, b"/k", b"w", lease=0x1234, lease_ttl=30),))
    newer = decode_delta(str(delta_name([after], encrypted=False)),
                         encode_delta(fingerprint(5, leased.events), [after]))
    assert newer.previous == fingerprint(5, old.revisions[0].events)  # what a restore checks to chain them
    negative = encode_delta(previous, [Revision(5, seen, (Event(PUT, b"/k", b"v", lease=1, lease_ttl=-1),))])
    with pytest.raises(DeltaError, match="granted for -1s"):
        decode_delta(name, negative)


def version_2_record(revision: Revision) -> bytes:
    """`revision`'s record as version 2 wrote it: what its fingerprint digests."""
    number, micros = revision.number, round(revision.seen * 1e6)
    parts = [struct.pack(">QqI", number, micros, len(revision.events))]
    for event in revision.events:
        parts.append(struct.pack(">BI", event.kind, len(event.key)) + event.key)
        if event.kind == PUT:
            parts.append(struct.pack(">I", len(event.value)) + event.value)
    return b"".join(parts)
