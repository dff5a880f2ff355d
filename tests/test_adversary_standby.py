"""Adversary (adv-standby): the standby (worker.standby), which applies each delta as it is stored and signs what it
compacts into `snapshot-<time>.compacted.tar.gz`.

Each test is one attack. Those whose docstrings begin "FIXED" broke the code as it was when written (what etcd never
held, or what history vanished, and who could cause it) and pass since their fixes; "GUARD": the promise held
against the attack, and the test keeps it so. Real etcd (each test's own: its history is read at old revisions),
real Redis, the watcher and the standby as the service runs them, signing on (`signing.key-file`)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from etcd3 import etcdrpc

import worker.standby as standby_module
from common import etcd
from common.config import EtcdConfig
from common.deltas import PUT, Event, Fingerprint, Revision, decode_delta, delta_name, encode_delta, parse_delta_name
from common.storage.local import is_temp_name
from harness.cli import COMMAND, environment
from harness.fill import ETCD_FLAGS, fill
from harness.in_process import Service
from harness.processes import wait_until
from harness.report import Report
from harness.servers import EtcdServer, RedisServer, etcdctl
from harness.writer import current_revision
from recovery.pitr import base_backup, reach_from
from recovery.throwaway import CLIENT_SOCKET
from recovery.workdir import COMPACT_PREFIX
from tests.test_adversary_compaction import compacting_service, full_backup, restore_cli, unpacked
from tests.test_compaction import kvs, served, write_round
from tests.test_deltas import wait_stored, watcher
from tests.test_standby import compacted, newest_compacted_revision, standby
from tests.test_worker import fill_disk, small_disk  # noqa: F401 - the fixture (request.getfixturevalue)
from worker.standby import LEASE_KEY, LEASE_TTL

pytestmark = pytest.mark.xdist_group("point-in-time")
COMPACT_AFTER = 100  # the least the config takes


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
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    """FIXED (no attacker needed; a Redis writer who deletes the watcher's lease makes the race): two watchers (a
    deployment may run several) can store the same revisions twice, in deltas cut at other places, and the project
    takes one copy when they agree (tests/test_deltas.py). The standby compacts exactly at the end of a delta (the
    batch's last), at revision C, and etcd's compaction at C-1 drops the history before it; the second watcher's
    copy holds C's delta and the next one, and reaches as far as any: the chain after C takes it. Tying it to the
    compacted backup watched the throwaway etcd from the copy's first revision, long compacted: "the backup no
    longer holds revision ...". Every restore past C was refused until the next full backup (the history after C
    vanished for restores), and the standby started again every minute from C, restoring the whole database, and
    failed the same way, for ever (no compaction job either: the standby holds its lease)."""
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
    report(f"a second watcher's agreeing copy of the delta the standby's compacted backup ends with (revision "
           f"{first.revision}) and of the next one", f"restores to {past} (from {first_name}) and to {end} equal etcd; "
           f"the standby compacted past it (to {newest_compacted_revision(service.store)})")


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the standby's throwaway etcd: setpriv execs etcd in the child)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass(frozen=True)
class Throwaway:
    """A standby's throwaway etcd as it ran: its process, its work dir and the directory of its data dir (in
    /dev/shm when there is room: recovery.pitr's MEMORY_DIR)."""

    pid: int
    work: Path
    data: Path


def throwaway_of(standby_pid: int) -> Throwaway | None:
    """The standby's throwaway etcd (the child that serves its socket: not `etcdctl snapshot restore`)."""
    for child in children_of(standby_pid):
        try:
            arguments = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            work = Path(os.readlink(f"/proc/{child}/cwd"))
        except OSError:
            continue
        if f"unix://{CLIENT_SOCKET}".encode() in arguments:  # not the test's own etcd servers
            return Throwaway(child, work, Path(arguments[arguments.index(b"--data-dir") + 1].decode()).parent)
    return None


def standby_process(tmp_path: Path, label: str) -> subprocess.Popen[bytes]:
    """`etcd-backup standby`, as the Procfile runs it (its log in tmp_path/standby-<label>.log)."""
    with (tmp_path / f"standby-{label}.log").open("wb") as log:
        return subprocess.Popen([COMMAND, "standby", "--config", str(tmp_path / "config.yml")], stdout=log,
                                stderr=subprocess.STDOUT, env=environment(None))


def running_throwaway(service: Service, process: subprocess.Popen[bytes], writing: bool) -> Throwaway | None:
    """The standby's throwaway etcd, if it runs (it is applying the backlog then), and, if `writing`, once the
    standby writes a compacted backup (its temp file is in backup-dir)."""
    return throwaway_of(process.pid) if not writing or compacted_temp_files(service) else None


def waited_for(find: Callable[[], Throwaway | None], timeout: float, what: str,
               process: subprocess.Popen[bytes]) -> Throwaway:
    """What `find` finds, once it does."""
    found: list[Throwaway] = []

    def check() -> bool:
        if (value := find()) is not None:
            found.append(value)
        return bool(found)

    wait_until(check, timeout, what, process)
    return found[0]


def killed(process: subprocess.Popen[bytes], throwaway: Throwaway) -> None:
    """kill -9 the standby; its throwaway etcd must die with it (setpriv --pdeathsig)."""
    process.kill()
    process.wait(10)
    wait_until(lambda: not alive(throwaway.pid), 10, f"the killed standby's etcd (pid {throwaway.pid}) to die")


def compacted_temp_files(service: Service) -> list[str]:
    return [name for name in os.listdir(service.config.backup_dir) if is_temp_name(name) and "compacted" in name]


@pytest.mark.slow
def test_a_standby_killed_mid_apply_and_mid_compaction_leaves_nothing_for_good_and_the_next_goes_on(
        make_service: Callable[..., Service], redis_conn: redis.Redis, tmp_path: Path, report: Report) -> None:
    """GUARD (faults): `etcd-backup standby` killed -9 while it applies a backlog, then again while it writes a
    compacted backup (its temp file in backup-dir), on a 30 MB database. Each time: its throwaway etcd dies with
    it, no partial backup is listed, the backups stay; the next standby removes the work dirs (/tmp, /dev/shm) the
    killed one left, goes on and stores a compacted backup equal to etcd at its revision; the next full backup
    removes the temp file; a restore to the end equals etcd. What it held meanwhile (its work dir, its etcd's data
    dir, the temp file) was private to its user."""
    server = EtcdServer(tmp_path / "etcd", extra_args=ETCD_FLAGS).start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        client = server.client()
        fill(client, 30 << 20)
        service = compacting_service(make_service, server, tmp_path)
        base = full_backup(service)
        with watcher(service.config, redis_conn):
            lease = None
            for round_ in range(4):  # a backlog of ~600 revisions
                lease = write_round(client, round_, lease)
            wait_stored(redis_conn, current_revision(server.url))
            left: list[Throwaway] = []
            for label, writing in (("mid-apply", False), ("mid-compaction", True)):
                redis_conn.delete(LEASE_KEY)  # the killed one's lease, lapsed (LEASE_TTL) sooner
                process = standby_process(tmp_path, label)
                processes.append(process)
                throwaway = waited_for(partial(running_throwaway, service, process, writing), 120,
                                       f"the standby {label}", process)
                # Another local user reaches none of what it holds: every Secret of the cluster.
                private = [throwaway.work, throwaway.data, *(service.config.backup_dir / name
                                                             for name in compacted_temp_files(service))]
                assert all(path.stat().st_mode & 0o077 == 0 for path in private), private
                killed(process, throwaway)
                left.append(throwaway)
                assert [name for name in service.store.list_backups()] == [base], label
            assert compacted_temp_files(service), "killed mid-compaction: its temp file is there"
            redis_conn.delete(LEASE_KEY)
            process = standby_process(tmp_path, "after")
            processes.append(process)
            wait_until(lambda: bool(compacted(service.store)), 180, "a compacted backup by the next standby", process)
            for throwaway in left:  # removed by the next standby as it started
                assert throwaway.work.name.startswith(COMPACT_PREFIX), throwaway
                assert not throwaway.work.exists() and not throwaway.data.exists(), throwaway
            write_round(client, 9, lease, steps=20)
            end = current_revision(server.url)
            wait_stored(redis_conn, end)
            wait_until(lambda: throwaway_of(process.pid) is not None, 30, "the standby's etcd")
            running = throwaway_of(process.pid)
            assert running is not None
            process.terminate()
            assert process.wait(60) == 0
            assert not alive(running.pid) and not running.work.exists() and not running.data.exists()
        full_backup(service)  # removes every temp file not the live holder's: the killed standby's
        assert compacted_temp_files(service) == []
        name, metadata = compacted(service.store)[0]
        assert metadata.compacted_from == base and served(unpacked(service, name, tmp_path)) == kvs(
            server.url, metadata.revision)
        done, data_dir = restore_cli(service, tmp_path, end)
        assert done.returncode == 0, done.stdout + done.stderr
        assert served(data_dir) == kvs(server.url, end)
        report("`etcd-backup standby` killed -9 as its throwaway etcd started on a 30 MB database with a backlog, "
               "then again while it wrote its first compacted backup",
               "each time its etcd died with it, nothing listed but the full backup; the next standby removed the "
               f"work dirs left in /tmp and /dev/shm and stored {len(compacted(service.store))} compacted backups, "
               "equal to etcd; the next full backup removed the temp file; restore to the end equal to etcd")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        server.stop()


@pytest.mark.slow
def test_a_signed_delta_of_another_history_at_the_standbys_next_revision_is_never_applied(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """GUARD (store writer, signing on): the service's signature proves a delta came from a watcher with the key, not
    that it is this etcd's history: one key for a fleet of clusters, or this cluster's etcd before it was restored
    to an earlier revision. Copied into the store just ahead of the standby (its next revisions, before the
    watcher stores them, reaching compact-after-revisions past its base), with a Secret of its own: the standby
    refuses it (its revision before is not the throwaway etcd's), stores no compacted backup holding it, and a
    restore past it is refused too (two histories) while it is there."""
    service = compacting_service(make_service, own_etcd, tmp_path)
    client = own_etcd.client()
    client.put("/before", "b")
    full_backup(service)
    caplog.set_level(logging.INFO, logger="worker.standby")
    with watcher(service.config, redis_conn), standby(service.config, redis_conn):
        for number in range(20):
            client.put(f"/filler/{number % 5}", f"f{number}")
        reached = current_revision(own_etcd.url)
        wait_stored(redis_conn, reached)
        wait_until(lambda: f"at revision {reached}" in caplog.text, 30, f"the standby at revision {reached}")
        secret = b"/registry/secrets/kube-system/another-history"
        foreign = [Revision(reached + n, time.time(), (Event(PUT, secret if n == 1 else f"/other/{n}".encode(),
                                                            b"not this etcd's"),)) for n in range(1, COMPACT_AFTER + 2)]
        planted = service.store.put_delta(str(delta_name(foreign, encrypted=False)),
                                          encode_delta(Fingerprint(reached, os.urandom(32)), foreign))
        wait_until(lambda: "does not follow" in caplog.text, 30, "the standby to refuse the planted delta")
        for number in range(COMPACT_AFTER + 20):  # this etcd's own revisions, past the planted ones
            client.put(f"/filler/{number % 5}", f"g{number}")
        end = current_revision(own_etcd.url)
        wait_stored(redis_conn, end)
        time.sleep(5)
    assert all(secret not in served(unpacked(service, name, tmp_path)) for name, _ in compacted(service.store))
    done, data_dir = restore_cli(service, tmp_path, end)
    said = done.stdout + done.stderr
    assert done.returncode != 0 and planted in said and not data_dir.exists(), said
    assert "two histories" in said or "disagree" in said, said


def throwaway_connection(throwaway: Throwaway) -> etcd.EtcdConnection:
    """A connection to the throwaway etcd's own socket (in its 0700 work dir: this test runs as its user)."""
    return etcd.connect(EtcdConfig(endpoints=(f"unix://{throwaway.work}/{CLIENT_SOCKET}",), timeout=5.0), prove=False)


@pytest.mark.slow
def test_a_throwaway_etcd_that_moves_by_itself_or_dies_never_makes_a_compacted_backup(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """GUARD (faults): the standby's throwaway etcd runs for as long as the standby, every lease of production kept
    alive there. One of them expires there (a stalled keep-alive; here revoked on its socket, which makes the same
    revision: the lease's keys deleted), while production keeps it: the throwaway etcd now holds a revision etcd
    never had. Then the throwaway etcd is killed -9. Each time the standby must refuse what it has, start again
    from the newest backup, and every compacted backup stored equals etcd at its revision, key for key (leases
    too); a restore to the end equals etcd."""
    monkeypatch.setattr(standby_module, "RETRY_SECONDS", 1.0)  # the test waits less for the restart: nothing else
    service = compacting_service(make_service, own_etcd, tmp_path)
    client = own_etcd.client()
    lease = write_round(client, 0, None)
    full_backup(service)
    caplog.set_level(logging.INFO, logger="worker.standby")
    with watcher(service.config, redis_conn), standby(service.config, redis_conn):
        lease = write_round(client, 1, lease)
        reached = current_revision(own_etcd.url)
        wait_stored(redis_conn, reached)
        wait_until(lambda: f"at revision {reached}" in caplog.text, 60, f"the standby at revision {reached}")
        throwaway = throwaway_of(os.getpid())
        assert throwaway is not None
        inside = throwaway_connection(throwaway)
        try:
            etcdrpc.LeaseStub(inside.channel).LeaseRevoke(etcdrpc.LeaseRevokeRequest(ID=lease.id), timeout=10)
        finally:
            inside.close()
        lease = write_round(client, 2, lease)  # production still holds it, and revokes it itself only now
        wait_stored(redis_conn, current_revision(own_etcd.url))
        wait_until(lambda: "starting again from the newest backup" in caplog.text, 60,
                   "the standby to refuse the revision its throwaway etcd made by itself")
        refused = caplog.text.split("starting again from the newest backup")[0].splitlines()[-1]
        wait_until(lambda: (found := throwaway_of(os.getpid())) is not None and found.pid != throwaway.pid, 60,
                   "the standby's next throwaway etcd")
        killed_etcd = throwaway_of(os.getpid())
        assert killed_etcd is not None
        os.kill(killed_etcd.pid, signal.SIGKILL)
        write_round(client, 3, lease)
        end = current_revision(own_etcd.url)
        wait_stored(redis_conn, end)
        wait_until(lambda: end - newest_compacted_revision(service.store) < COMPACT_AFTER, 120,
                   "the standby to compact up to the last compact-after-revisions")
        assert caplog.text.count("starting again from the newest backup") >= 2, caplog.text
        assert not killed_etcd.work.exists() and not killed_etcd.data.exists()
    assert "does not follow" in refused or "by itself" in refused, refused
    made = compacted(service.store)
    assert made
    for name, metadata in made:
        assert served(unpacked(service, name, tmp_path)) == kvs(own_etcd.url, metadata.revision), name
    done, data_dir = restore_cli(service, tmp_path, end)
    assert done.returncode == 0, done.stdout + done.stderr
    assert served(data_dir) == kvs(own_etcd.url, end)


class SkewedClock(redis.Redis):
    """The service's Redis, whose `TIME` (the clock that names backups and deltas: common.clock) is `offset`
    seconds ahead of the real one: a Redis host whose clock was stepped, later set right. Everything else is the
    real Redis' (its keys, its TTLs)."""

    offset = 0.0

    def time(self) -> tuple[int, int]:  # type: ignore[override]
        seconds, microseconds = super().time()
        shifted = round((int(seconds) + self.offset) * 1_000_000) + int(microseconds)
        return shifted // 1_000_000, shifted % 1_000_000


@pytest.mark.slow
def test_compactions_go_on_once_redis_clock_is_set_back(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, report: Report) -> None:
    """FIXED (no attacker needed: a Redis host whose clock is stepped back, e.g. by NTP after it ran ahead): Redis'
    clock (which names backups and deltas) runs an hour ahead for a while, then is set right. The compacted backup
    the standby stored meanwhile is named in the future now: restores and retention skip it (its time is unknown).
    The standby went on following it, and named each next compacted backup at least a second after it: in the
    future, not stored ("the watcher's clock is ahead", it said; it is not). For that hour no compacted backup,
    no compaction job (the standby holds its lease), and a restore to the end applied every revision since the
    last full backup. It must go on compacting, as a compaction job would (from the newest backup not named in
    the future)."""
    service = compacting_service(make_service, own_etcd, tmp_path)
    client = own_etcd.client()
    lease = write_round(client, 0, None)
    full_backup(service)
    clock = SkewedClock(connection_pool=redis_conn.connection_pool)
    clock.offset = 3600.0
    caplog.set_level(logging.INFO, logger="worker.standby")
    with watcher(service.config, clock), standby(service.config, clock):
        lease = write_round(client, 1, lease)
        wait_stored(redis_conn, current_revision(own_etcd.url))
        wait_until(lambda: bool(compacted(service.store)), 60, "a compacted backup while the clock is ahead")
        ahead, _ = compacted(service.store)[-1]
        clock.offset = 0.0  # set right
        for round_ in range(2, 5):
            lease = write_round(client, round_, lease)
        end = current_revision(own_etcd.url)
        wait_stored(redis_conn, end)
        deadline = time.monotonic() + 60
        while (end - (base := base_backup(service.store, end, datetime.now(UTC)))[1].revision > COMPACT_AFTER + 160
               and time.monotonic() < deadline):
            time.sleep(0.5)
    said = [line for line in caplog.text.splitlines() if "compacted backup at revision" in line]
    assert end - base[1].revision <= COMPACT_AFTER + 160, (
        f"a restore to {end} starts from {base[0]} (revision {base[1].revision}); the standby follows {ahead}, named "
        f"in the future now: {said[-1:]}")
    report("Redis' clock an hour ahead while the standby compacted, then set right",
           f"a restore to {end} starts from {base[0]} (revision {base[1].revision})")


def test_a_redis_writer_holding_the_standbys_lease_does_not_stop_compactions_for_ever(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """A Redis writer with the worker's rights (e.g. a compromised worker pod; not the API's ACL user) sets
    `etcd-backup:standby` again every 10 s with the standby's own 30 s TTL (what clear_unexpiring_lease lets stand):
    no standby ever gets the lease. Once the deltas are three times compact-after-revisions past the newest backup,
    the scheduler queues a compaction job all the same (scheduler.cron.STANDBY_BEHIND): compactions do not stop
    for ever. (It failed before: while the key was there, no job was ever queued.)"""
    from scheduler.cron import run_compaction_tick

    service = compacting_service(make_service, own_etcd, tmp_path)
    client = own_etcd.client()
    client.put("/before", "b")
    full_backup(service)
    with watcher(service.config, redis_conn):
        for number in range(3 * COMPACT_AFTER + 5):
            client.put(f"/filler/{number % 10}", f"f{number}")
        wait_stored(redis_conn, current_revision(own_etcd.url))
    redis_conn.set(LEASE_KEY, "not a standby", px=int(LEASE_TTL * 1000))
    assert run_compaction_tick(service.config, redis_conn, datetime.now(UTC), "test") is not None




@pytest.mark.slow
def test_a_full_disk_leaves_no_partial_compacted_backup_and_the_standby_goes_on_once_there_is_room(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        report: Report) -> None:
    """GUARD (faults): backup-dir on a 1 MiB tmpfs, full when the standby's compacted backup is due. It fails,
    leaves no temp file and no partial backup, removes nothing (the full backup and every delta stay), and starts
    again; once there is room it stores the compacted backup, equal to etcd at its revision."""
    monkeypatch.setattr(standby_module, "RETRY_SECONDS", 1.0)  # the test waits less for the restart: nothing else
    disk: Path = request.getfixturevalue("small_disk")  # tests/test_worker.py's: a 1 MiB tmpfs
    service = compacting_service(make_service, own_etcd, tmp_path, backup_dir=str(disk))
    client = own_etcd.client()
    lease = write_round(client, 0, None)
    base = full_backup(service)
    with watcher(service.config, redis_conn):
        write_round(client, 1, lease)
        end = current_revision(own_etcd.url)
        wait_stored(redis_conn, end)
    stored = sorted(os.listdir(disk))
    filler = fill_disk(disk)
    caplog.set_level(logging.INFO, logger="worker.standby")
    with standby(service.config, redis_conn):
        wait_until(lambda: caplog.text.count("starting again from the newest backup") >= 2, 60,
                   "the standby to fail twice on the full disk")
        assert sorted(os.listdir(disk)) == sorted([*stored, filler.name]), "a partial file, or one removed"
        filler.unlink()
        wait_until(lambda: bool(compacted(service.store)), 60, "the compacted backup once there is room")
    failed = [line for line in caplog.text.splitlines() if "starting again from the newest backup" in line]
    assert all("No space left on device" in line or "is full" in line for line in failed), failed
    (name, metadata), = compacted(service.store)
    assert metadata.compacted_from == base and base in service.store.list_backups()
    assert served(unpacked(service, name, tmp_path)) == kvs(own_etcd.url, metadata.revision)
    report("backup-dir on a 1 MiB tmpfs, full when the standby's compacted backup is due",
           f"{len(failed)} tries failed (\"{failed[0].split('standby: ', 1)[-1][:120]}\"), no file added or removed; "
           f"once there was room, {name}, equal to etcd")


def every_compacted_backup_equals_etcd(service: Service, endpoint: str, tmp_path: Path) -> list[str]:
    """The compacted backups stored, each checked equal to etcd at its revision, key for key (opened as an operator
    opens it: tar xzf + etcdctl snapshot restore)."""
    made = compacted(service.store)
    for name, metadata in made:
        assert served(unpacked(service, name, tmp_path)) == kvs(endpoint, metadata.revision), name
    return [name for name, _ in made]


def expired(client: Any, key: str) -> bool:
    """Whether `key` (put with a lease) is gone: etcd deletes it once its lease expires."""
    return client.get(key)[0] is None


@pytest.mark.slow
def test_leases_that_expire_in_production_between_deltas_are_compacted_as_etcd_had_them(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """GUARD (faults, no attacker): leases of etcd's shortest TTL (2 s) that production lets expire, between two
    deltas, while the standby follows (their keys deleted by etcd itself, one revision each; the throwaway etcd
    keeps its copy of each lease alive meanwhile, and revokes it once keyless). Every compacted backup equals etcd
    at its revision, lease IDs included, and a restore to the end equals etcd."""
    service = compacting_service(make_service, own_etcd, tmp_path)
    client = own_etcd.client()
    client.put("/before", "b")
    full_backup(service)
    with watcher(service.config, redis_conn), standby(service.config, redis_conn):
        for round_ in range(3):
            short = client.lease(2)
            for number in range(3):
                client.put(f"/expiring/{round_}/{number}", "gone in 2 s", lease=short)
            for number in range(60):
                client.put(f"/filler/{number % 7}", f"{round_}.{number}")
            wait_until(partial(expired, client, f"/expiring/{round_}/0"), 15, "production to let the lease expire")
            for number in range(60):
                client.put(f"/filler/{number % 7}", f"{round_}.after.{number}")
        end = current_revision(own_etcd.url)
        wait_stored(redis_conn, end)
        wait_until(lambda: end - newest_compacted_revision(service.store) < COMPACT_AFTER, 60,
                   "the standby to compact up to the last compact-after-revisions")
    assert not any(key.startswith(b"/expiring/") for key in kvs(own_etcd.url, end))
    assert len(every_compacted_backup_equals_etcd(service, own_etcd.url, tmp_path)) >= 2
    done, data_dir = restore_cli(service, tmp_path, end)
    assert done.returncode == 0, done.stdout + done.stderr
    assert served(data_dir) == kvs(own_etcd.url, end)


@pytest.mark.slow
def test_redis_gone_and_back_leaves_no_partial_backup_and_the_standby_goes_on(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """GUARD (faults): the standby's Redis (its lease, the backup lock, the clock) stops while it follows, for a few
    seconds, and comes back empty (no persistence). The standby stops, leaves no partial backup, and once Redis is
    back takes the lease again and goes on; its compacted backups equal etcd, and a restore to the end too. (Its
    Redis is one of its own here, so that the session's, which the watcher and the worker use, stays up.)"""
    monkeypatch.setattr(standby_module, "RETRY_SECONDS", 1.0)  # the test waits less for the restart: nothing else
    own_redis = RedisServer(tmp_path / "standby-redis").start()
    try:
        service = compacting_service(make_service, own_etcd, tmp_path)
        client = own_etcd.client()
        lease = write_round(client, 0, None)
        full_backup(service)
        caplog.set_level(logging.INFO, logger="worker.standby")
        with watcher(service.config, redis_conn), standby(service.config, own_redis.client()):
            lease = write_round(client, 1, lease)
            wait_stored(redis_conn, current_revision(own_etcd.url))
            wait_until(lambda: bool(compacted(service.store)), 60, "a compacted backup")
            own_redis.stop()
            lease = write_round(client, 2, lease)
            wait_until(lambda: "standby: Redis" in caplog.text or "Connection refused" in caplog.text, 30,
                       "the standby to meet Redis gone")
            time.sleep(2)
            own_redis.start()
            write_round(client, 3, lease)
            end = current_revision(own_etcd.url)
            wait_stored(redis_conn, end)
            wait_until(lambda: end - newest_compacted_revision(service.store) < COMPACT_AFTER, 90,
                       "the standby to compact up to the last compact-after-revisions")
        assert compacted_temp_files(service) == []
        assert len(every_compacted_backup_equals_etcd(service, own_etcd.url, tmp_path)) >= 2
        done, data_dir = restore_cli(service, tmp_path, end)
        assert done.returncode == 0, done.stdout + done.stderr
        assert served(data_dir) == kvs(own_etcd.url, end)
    finally:
        own_redis.stop()


@pytest.mark.slow
def test_a_backup_taken_after_etcd_compacted_inside_a_long_delta_is_restored_past(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    """FIXED (the same check as the second watcher's copy above, no attacker; the README allows a delta-period up
    to 10 minutes, and kube-apiserver compacts etcd every 5): production etcd compacts at revision c while a delta
    is being gathered that began before c, and a full backup is then taken (its snapshot holds no history before
    c). A restore past the backup starts from it, and the delta that holds its revision began before c: tying
    them watched the restored backup from the delta's first revision, and every restore past the backup was
    refused ("the backup no longer holds revision ..."), until the next full backup."""
    service = compacting_service(make_service, own_etcd, tmp_path, delta_period="60s")
    client = own_etcd.client()
    client.put("/before", "b")
    full_backup(service)
    with watcher(service.config, redis_conn):
        for number in range(20):  # the delta being gathered begins here
            client.put(f"/filler/{number % 5}", f"f{number}")
        # The watch has begun and has every put: a compaction now falls inside its delta (CI once compacted
        # before the watcher's thread had opened its watch: a gap, not this case).
        wait_until(own_etcd.watches_caught_up, 20, "the watcher's watch to catch up")
        compacted_at = current_revision(own_etcd.url)
        etcdctl("compact", str(compacted_at), endpoint=own_etcd.url)
        client.put("/after-the-compaction", "x")
        backup = full_backup(service)
        for number in range(20):
            client.put(f"/filler/{number % 5}", f"g{number}")
        end = current_revision(own_etcd.url)
    wait_stored(redis_conn, end)  # stored as the watcher stopped: one delta from before the compaction to the end
    said = [parse_delta_name(name) for name in service.store.list_deltas()]
    metadata = service.store.read_metadata(backup)
    assert metadata is not None and any(delta is not None and delta.first < compacted_at and delta.last == end
                                        for delta in said), said
    done, data_dir = restore_cli(service, tmp_path, end)
    assert done.returncode == 0 and f"{backup}: " in done.stdout, done.stdout + done.stderr
    assert served(data_dir) == kvs(own_etcd.url)


@pytest.mark.slow
def test_with_rotate_1_a_full_backup_mid_way_keeps_the_history_and_every_restore_applies_little(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    """GUARD (retention, the recovery point): rotate 1, and a full backup taken while the standby follows. Its
    compacted backups never push the full backup or a delta after it out (each compaction prunes, as any backup);
    the deltas after the full backup reach the end without a break; and for EVERY revision from the full backup to
    the end, the backup a restore starts from is at most compact-after-revisions plus one delta's revisions
    before it. Restores into the middle and to the end equal etcd."""
    service = compacting_service(make_service, own_etcd, tmp_path, rotate=1)
    client = own_etcd.client()
    lease = write_round(client, 0, None)
    first = full_backup(service)
    with watcher(service.config, redis_conn), standby(service.config, redis_conn):
        for round_ in range(1, 3):
            lease = write_round(client, round_, lease)
        wait_stored(redis_conn, current_revision(own_etcd.url))
        wait_until(lambda: bool(compacted(service.store)), 60, "a compacted backup")
        second = full_backup(service)
        for round_ in range(3, 6):
            lease = write_round(client, round_, lease)
        end = current_revision(own_etcd.url)
        wait_stored(redis_conn, end)
        wait_until(lambda: end - newest_compacted_revision(service.store) < COMPACT_AFTER, 60,
                   "the standby to compact up to the last compact-after-revisions")
    store, now = service.store, datetime.now(UTC)
    kept = store.list_backups()
    assert second in kept and first not in kept, kept  # rotate 1: the newest full backup, never a compacted one
    since = store.read_metadata(second)
    assert since is not None
    deltas, reached = reach_from(store, since.revision, [])
    assert reached == end, (reached, deltas)
    spans = [said.last - said.first + 1 for name in store.list_deltas() if (said := parse_delta_name(name))]
    behind = {target: target - base_backup(store, target, now)[1].revision for target in range(since.revision, end + 1)}
    worst = max(behind, key=lambda target: behind[target])
    assert behind[worst] <= COMPACT_AFTER + max(spans), (worst, behind[worst], max(spans))
    middle = since.revision + COMPACT_AFTER // 2
    for target in (middle, end):
        done, data_dir = restore_cli(service, tmp_path, target)
        assert done.returncode == 0, done.stdout + done.stderr
        assert served(data_dir) == kvs(own_etcd.url, target), target
    report("rotate 1, a full backup taken while the standby follows, ~750 revisions",
           f"{second} kept, {first} and the compacted backups before {second} pruned, the deltas after it unbroken to "
           f"{end}; for every revision {since.revision}..{end} a restore starts at most {behind[worst]} revisions "
           f"before it (compact-after-revisions {COMPACT_AFTER}, the largest delta {max(spans)} revisions); restores "
           f"to {middle} and {end} equal etcd")
