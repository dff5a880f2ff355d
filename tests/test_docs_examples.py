"""The documents' console examples, run as written (harness.docs): docs/restore.md's runbook against a lost etcd's
real backups and deltas (one member, then a three-member cluster, a point in time, encrypted backups in
SeaweedFS with the service down), and the README's. Each test maps the documents' hosts and paths to its own,
runs every block of its sections, compares the output with the page, and then checks what the page promises
(the restored etcd serves what the lost one held at that revision). A last test checks that every console
block of both documents is run by one of them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from pyrage import x25519

from harness.docs import ROOT, DocsRunner, console_blocks, sections
from harness.in_process import Service, served_over_http
from harness.keys import encryption, signing
from harness.processes import BIN_DIR, free_port, http, stop_process, wait_until
from harness.servers import EtcdServer
from harness.writer import current_revision
from tests.test_compaction import KeyValue, kvs
from tests.test_deltas import wait_stored, watcher

RESTORE = "docs/restore.md"
README = "README.md"
MEMBERS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
DOCUMENTED_REVISION = "85"  # docs/restore.md's --to-revision
DOCUMENTED_TIME = "2026-12-07T03:10:00Z"  # its --to-time, and the README's
NEWEST_BACKUP = "revision 23, 12 user keys"
AT_THE_END = "revision 85, with 24 user keys"
AT_THE_TIME = "revision 54, with 18 user keys"
"""What lose_etcd's writes make etcd hold (a revision a write): the pages show them, as promises (DocsRunner.promise):
the newest backup (after monday's and tuesday's writes), the last delta, the moment between first and second."""
ENCRYPTED_BACKUP = "revision 27, 6 user keys"  # write_keys("secret", 25) on a fresh etcd: keys 1 to 6 of 7 left

RUN_BY_THE_TESTS: dict[str, tuple[str, ...]] = {
    RESTORE: ("1. Find the backup", "3. Restore one member", "4. Restore a three-member cluster",
              "5. Restore a point in time", "6. Encrypted backups", "When a restore refuses"),
    README: ("etcd lost its data? Restore now", "Quick start"),
}
"""The sections whose console blocks the tests below run (test_every_console_block_is_run checks it is all)."""


@dataclass
class LostCluster:
    """An etcd that was backed up (full backups, then deltas) and is gone, and the service with it; what it held,
    to compare with."""

    service: Service
    end: int  # the last revision it wrote, stored in the deltas
    middle: int  # a revision between the backup and the end
    middle_time: datetime  # a moment just after `middle` was stored and before the next write
    held_at: Callable[[int], dict[bytes, KeyValue]]


def write_keys(client: object, prefix: str, count: int) -> None:
    for number in range(count):
        client.put(f"/registry/{prefix}/{number % 7}", f"{prefix} {number}")  # type: ignore[attr-defined]
    client.delete(f"/registry/{prefix}/0")  # type: ignore[attr-defined]


def lose_etcd(make: Callable[..., Service], redis_conn: redis.Redis, tmp_path: Path,
              **overrides: object) -> LostCluster:
    """An etcd backed up by a service made by `make` (with `overrides`): a full backup, deltas from then on, a
    second full backup on the way; then gone."""
    source = EtcdServer(tmp_path / "lost-etcd").start()
    try:
        service = make(etcd_overrides={"endpoints": [source.url]}, deltas=True, delta_period="100ms", **overrides)
        client = source.client()
        write_keys(client, "monday", 10)
        assert service.client.post("/api/v1/backup").status_code == 200
        time.sleep(1.1)  # the second backup's name a second later (their names are to the second)
        with watcher(service.config, redis_conn):
            write_keys(client, "tuesday", 10)
            assert service.client.post("/api/v1/backup").status_code == 200
            write_keys(client, "first", 30)
            middle = current_revision(source.url)
            wait_stored(redis_conn, middle)
            time.sleep(1.2)  # the delta names' times are whole seconds: the target second holds nothing later
            middle_time = datetime.now(UTC).replace(microsecond=0)
            time.sleep(1.2)
            write_keys(client, "second", 30)
            end = current_revision(source.url)
            wait_stored(redis_conn, end)
        held = {revision: kvs(source.url, revision) for revision in (middle, end)}
    finally:
        source.stop()
    service.stop_worker()  # the service is down too: only its store is left
    return LostCluster(service, end, middle, middle_time, held.__getitem__)


@pytest.fixture
def lost_cluster(make_service: Callable[..., Service], redis_conn: redis.Redis, tmp_path: Path) -> LostCluster:
    """Backed up into a local backup-dir."""
    return lose_etcd(make_service, redis_conn, tmp_path)


def members(runner: DocsRunner, hosts: tuple[str, ...] = MEMBERS) -> dict[str, str]:
    """Map each host's etcd ports and data dir to fresh ones of this test; return each host's client URL."""
    urls = {}
    for host in hosts:
        client_port, peer_port = free_port(), free_port()
        runner.map(f"{host}:2379", f"127.0.0.1:{client_port}")
        runner.map(f"{host}:2380", f"127.0.0.1:{peer_port}")
        var_lib = runner.work / host  # /var/lib on that host: etcd's data dir, and the restore's staging dirs beside it
        var_lib.mkdir(parents=True)
        runner.map_on_host(host, "/var/lib", str(var_lib))
        urls[host] = f"http://127.0.0.1:{client_port}"
    return urls


def runbook(work: Path, service: Service) -> DocsRunner:
    """A runner in a new directory `work`, with the service's config and store where the page says."""
    work.mkdir()
    runner = DocsRunner(work)
    runner.map("/etc/etcd-backup/config.yml", str(work.parent / "config.yml"))  # conftest's write_config
    if service.config.s3 is None:
        runner.map("/var/lib/etcd-backup", str(service.config.backup_dir))
    else:
        runner.map("s3://etcd-backups/", service.config.s3.url.rstrip("/") + "/")
        runner.map("http://10.0.0.6:8333", str(service.config.s3.endpoint))
    return runner


@pytest.mark.slow
def test_the_restore_runbook_brings_back_the_lost_etcd_on_one_member_on_three_and_at_a_time_and_refuses_as_said(
        lost_cluster: LostCluster, tmp_path: Path) -> None:
    lost = lost_cluster
    with served_over_http(lost.service) as url:
        runner = runbook(tmp_path / "find", lost.service)
        runner.map("http://10.0.0.4:8080", url)
        for block in sections(RESTORE, "1. Find the backup"):
            runner.run_block(block)

    one = runbook(tmp_path / "one", lost.service)
    for promised in (NEWEST_BACKUP, AT_THE_END, f'"Revision" : {DOCUMENTED_REVISION}'):
        one.promise(promised)
    urls = members(one, MEMBERS[:1])
    try:
        for block in sections(RESTORE, "3. Restore one member"):
            one.run_block(block)
        assert kvs(urls["10.0.0.1"]) == lost.held_at(lost.end), "the restored member serves the lost etcd's keys"
    finally:
        one.stop()

    three = runbook(tmp_path / "three", lost.service)
    three.map(f"--to-revision {DOCUMENTED_REVISION}", f"--to-revision {lost.end}")
    three.promise(f'"Revision" : {DOCUMENTED_REVISION}')
    urls = members(three)
    try:
        for block in sections(RESTORE, "4. Restore a three-member cluster"):
            three.run_block(block)
        for url in urls.values():
            assert kvs(url) == lost.held_at(lost.end), f"{url} serves the lost etcd's keys"
    finally:
        three.stop()

    past = runbook(tmp_path / "past", lost.service)
    past.map(DOCUMENTED_TIME, lost.middle_time.strftime("%Y-%m-%dT%H:%M:%SZ"))
    past.promise(NEWEST_BACKUP)
    past.promise(AT_THE_TIME)
    members(past, MEMBERS[:1])
    for block in sections(RESTORE, "5. Restore a point in time"):
        past.run_block(block)
    restored = EtcdServer(past.work / "10.0.0.1" / "etcd", name="etcd0").start()
    try:
        assert kvs(restored.url) == lost.held_at(lost.middle), "the point in time is the lost etcd at that moment"
    finally:
        restored.stop()

    # Last, as it damages the store: the refusals, each what the page shows, and nothing left behind.
    refused = runbook(tmp_path / "refused", lost.service)
    refused.map(f"--to-revision {DOCUMENTED_REVISION}", f"--to-revision {lost.end}")
    members(refused, MEMBERS[:1])
    (refused.work / "10.0.0.1" / "etcd.lost" / "member").mkdir(parents=True)  # step 2's data dir set aside
    deltas = lost.service.store.list_deltas()
    damaged = lost.service.config.backup_dir / deltas[len(deltas) // 2]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    for block in sections(RESTORE, "When a restore refuses"):
        refused.run_block(block)
    assert list((refused.work / "10.0.0.1").iterdir()) == [refused.work / "10.0.0.1" / "etcd.lost"], "nothing left"


def test_every_console_block_is_run() -> None:
    """A console block outside the sections the tests run would be an example nobody checks."""
    unrun = [block.where for document, headings in RUN_BY_THE_TESTS.items()
             for block in console_blocks(document) if not block.heading.startswith(headings or ("\0",))]
    assert unrun == []


def test_the_output_matcher_fails_on_a_wrong_line() -> None:
    from harness.docs import matches
    assert matches(['"Revision" : 1234', "..."], '"Revision" : 99\nmore\n')
    assert not matches(['"Revision" : 1234'], '"Revision" : x\n')
    assert not matches(["restored snapshot-1.tar.gz"], "refused snapshot-1.tar.gz\n")
    assert matches(["then 1 delta to revision 9"], "then 3 deltas to revision 12\n")
    assert matches(["then 3 deltas, hash ab12cd34ef"], "then 1 delta, hash 0123456789\n")
    assert not matches(["then 3 deltas"], "then 3 backups\n")
    assert not matches(["a", "...", "b"], "a\nx\n")


@pytest.mark.slow
def test_the_restore_runbook_opens_encrypted_signed_backups_in_s3_with_the_service_down(
        s3_service: Callable[..., Service], own_etcd: EtcdServer, identity: x25519.Identity, identity_file: Path,
        tmp_path: Path) -> None:
    service = s3_service(etcd_overrides={"endpoints": [own_etcd.url]}, encryption=encryption(identity),
                         signing=signing(tmp_path))
    write_keys(own_etcd.client(), "secret", 25)
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    held = kvs(own_etcd.url)
    service.stop_worker()  # the service is down: only its store is left
    runner = runbook(tmp_path / "encrypted", service)
    runner.map("/etc/etcd-backup/age-identity.txt", str(identity_file))
    runner.promise(ENCRYPTED_BACKUP)
    runner.map("snapshot-20261207_030000.tar.gz.age", name)
    (runner.work / name).write_bytes(service.read_backup(name))  # the file, copied from the bucket
    members(runner, MEMBERS[:1])
    data_dir = runner.work / "10.0.0.1" / "etcd"
    blocks = list(sections(RESTORE, "6. Encrypted backups"))
    assert len(blocks) == 2
    for block in blocks:  # each restores into a new data dir, which then serves what etcd held
        shutil.rmtree(data_dir, ignore_errors=True)
        runner.run_block(block)
        restored = EtcdServer(data_dir, name="etcd0").start()
        try:
            assert kvs(restored.url) == held, block.where
        finally:
            restored.stop()


def restored_on(runner: DocsRunner, host: str, name: str = "etcd0") -> dict[bytes, KeyValue]:
    """What the data dir the page restored into on `host` serves (etcd started on it, then stopped; alone, as a
    cluster of its own: a member of three would wait for the other two)."""
    server = EtcdServer(runner.work / host / "etcd", name=name, extra_args=("--force-new-cluster",)).start()
    try:
        return kvs(server.url)
    finally:
        server.stop()


@pytest.mark.slow
def test_the_readmes_restore_now_brings_back_the_lost_etcd_from_a_signed_bucket_with_the_service_down(
        s3_service: Callable[..., Service], redis_conn: redis.Redis, tmp_path: Path) -> None:
    lost = lose_etcd(s3_service, redis_conn, tmp_path, signing=signing(tmp_path))
    runner = runbook(tmp_path / "readme", lost.service)
    runner.map(DOCUMENTED_TIME, lost.middle_time.strftime("%Y-%m-%dT%H:%M:%SZ"))
    for promised in (NEWEST_BACKUP, AT_THE_END):
        runner.promise(promised)
    runner.map("s3://etcd-backups/cluster-1/", runner.mapping.pop("s3://etcd-backups/"))  # the README's config
    runner.map("snapshot-20261207_030000.tar.gz", lost.service.store.list_backups()[-1])
    urls = members(runner)
    one_member, three_members, to_time, verify, start, check = sections(README, "etcd lost its data? Restore now")
    runner.run_block(one_member)
    assert restored_on(runner, "10.0.0.1") == lost.held_at(lost.end)
    runner.run_block(three_members)
    assert restored_on(runner, "10.0.0.2", "etcd1") == lost.held_at(lost.end)
    shutil.rmtree(runner.work / "10.0.0.1" / "etcd")  # the point in time, into a new data dir
    runner.run_block(to_time)
    runner.run_block(verify)
    runner.run_block(start)
    runner.run_block(check)
    try:
        assert kvs(urls["10.0.0.1"]) == lost.held_at(lost.middle), "etcd serves the lost etcd at that time"
    finally:
        runner.stop()


def answers(url: str) -> bool:
    try:
        return http("GET", url, timeout=2)[0] == 200
    except OSError:
        return False


@pytest.mark.slow
def test_the_readmes_quick_start_works_as_written_on_the_demo(tmp_path: Path) -> None:
    work = tmp_path / "clone"
    work.mkdir()
    port = free_port()
    demo = subprocess.Popen([str(ROOT / "examples" / "demo.sh")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True, env={
                                **os.environ, "PATH": f"{BIN_DIR}:{os.environ['PATH']}", "DEMO_PORT": str(port),
                                "DEMO_ETCD_PORT": str(free_port()), "DEMO_ETCD_PEER_PORT": str(free_port()),
                                "DEMO_DIR": str(work / "demo")})
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/readyz"), 60, "the demo's service", demo)
        runner = DocsRunner(work)
        runner.map("localhost:8080", f"localhost:{port}")
        runner.promise("20 user keys")  # the demo's 20 keys, counted as a client sees them
        for block in sections(README, "Quick start"):
            runner.run_block(block)
        assert len(list(work.glob("snapshot-*.tar.gz"))) == 1, "downloaded"
        assert len(restored := list((work / "demo" / "restored").iterdir())) == 1 and restored[0].name == "member"
    finally:
        stop_process(demo)
