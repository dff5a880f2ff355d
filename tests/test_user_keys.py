"""One key count, named (issue 27): "N user keys" is what a client sees, `etcdctl get "" --prefix`, everywhere a
count is shown: verify, restore, the drill, the API's verify answer (beside etcd's own total_keys, kept as it was).
etcd's `snapshot status` counts every entry of the database instead, its own keys and every revision it keeps: verify
said "24 keys in the database" for the demo's 20 keys.

The keys here have history (each written twice), deletions and a range deletion, on an etcd of the test's own (its
count is the test's alone)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from harness.cli import etcd_backup
from harness.in_process import Service
from harness.report import Report
from harness.servers import EtcdServer, etcdctl
from worker.drill import run_drill


def etcds_count(etcd: EtcdServer) -> int:
    """The keys a client sees: etcd's own answer to `etcdctl get "" --prefix`."""
    answer = json.loads(etcdctl("get", "", "--prefix", "--keys-only", "-w", "json", endpoint=etcd.url).stdout)
    return int(answer.get("count", 0))


def test_verify_restore_the_drill_and_the_api_count_the_keys_a_client_sees(
        make_service: Callable[..., Service], own_etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    service = make_service(etcd_overrides={"endpoints": [own_etcd.url]})
    client = own_etcd.client()
    for round_ in range(2):
        for number in range(20):
            client.put(f"/users/key-{number:02d}", f"value-{number}-{round_}")
    client.delete("/users/key-03")
    client.delete_prefix("/users/key-1")  # key-10 to key-19
    client.put("/other/key", "x" * 100_000)  # a value over a page: an overflow page of bbolt
    client.close()
    expected = etcds_count(own_etcd)
    assert expected == 20 - 1 - 10 + 1
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    path = service.config.backup_dir / name

    verified = etcd_backup("verify", str(path), timeout=120)
    assert verified.returncode == 0 and ": good: revision " in verified.stdout, verified
    assert f", {expected} user keys, " in verified.stdout, verified.stdout
    restored = etcd_backup("restore", str(path), "--data-dir", str(tmp_path / "restored"), timeout=120)
    assert restored.returncode == 0 and f", {expected} user keys, " in restored.stdout, restored

    answer = service.client.post(f"/api/v1/backup/{name}/verify").get_json()
    assert answer["user_keys"] == expected and answer["total_keys"] > expected, answer  # etcd's own: more
    drilled = run_drill(service.config, redis_conn)
    assert drilled.passed and f"with {expected} user keys, as recorded" in drilled.reason, drilled
    metadata = service.store.read_metadata(name)
    assert metadata is not None and metadata.key_count == expected
    report("keys with history, deletions and a range deletion: the counts shown against etcd's own "
           "(`etcdctl get \"\" --prefix`)",
           f"etcd: {expected}; verify and restore: \"{expected} user keys\"; the drill: \"with {expected} user keys, "
           f"as recorded\"; the API's verify answer: user_keys {answer['user_keys']} (total_keys, etcd's count of "
           f"every entry, {answer['total_keys']})")


def test_an_empty_etcd_has_no_user_key(empty_etcd: Any, tmp_path: Path) -> None:
    """A new cluster's database: etcd's buckets, no key in its key bucket."""
    from recovery.bbolt import user_keys
    from recovery.pitr import _save_snapshot

    snapshot = tmp_path / "empty.db"
    _save_snapshot(empty_etcd, snapshot)
    assert user_keys(snapshot) == 0
