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


PAGE = 4096


def bbolt_file(path: Path, pages: list[bytes]) -> Path:
    """A bbolt file of two meta pages whose root bucket is page 2, then `pages` (each padded to a page)."""
    from recovery.bbolt import MAGIC, META, PAGE_HEADER

    file = b""
    for meta_id in (0, 1):
        meta = PAGE_HEADER.pack(meta_id, 0x04, 0, 0) + META.pack(MAGIC, 2, PAGE, 0, 2, 0, 0, 2 + len(pages),
                                                                  meta_id, 0)
        file += meta.ljust(PAGE, b"\0")
    path.write_bytes(file + b"".join(page.ljust(PAGE, b"\0") for page in pages))
    return path


def branch(page_id: int, *children: int) -> bytes:
    from recovery.bbolt import BRANCH, BRANCH_ELEMENT, PAGE_HEADER

    elements = b"".join(BRANCH_ELEMENT.pack(BRANCH_ELEMENT.size * (len(children) - index), 1, child)
                        for index, child in enumerate(children))
    return PAGE_HEADER.pack(page_id, BRANCH, len(children), 0) + elements + b"k" * len(children)


def test_a_forged_database_is_refused_not_looped_on(tmp_path: Path) -> None:
    """The database comes from the backup, from whoever could write to the store: a page that points at itself, a
    page past the file's end, elements past it, no key bucket, nothing at all: BadDatabase, at once."""
    from recovery.bbolt import LEAF, PAGE_HEADER, BadDatabase, user_keys

    cases = {
        "reached twice": bbolt_file(tmp_path / "cycle.db", [branch(2, 2)]),
        "outside the file": bbolt_file(tmp_path / "far.db", [branch(2, 10**9)]),
        "cut short": bbolt_file(tmp_path / "elements.db", [PAGE_HEADER.pack(2, LEAF, 65535, 0)]),
        "no key bucket": bbolt_file(tmp_path / "empty-root.db", [PAGE_HEADER.pack(2, LEAF, 0, 0)]),
        "no valid bbolt meta page": tmp_path / "zeros.db",
    }
    (tmp_path / "zeros.db").write_bytes(bytes(3 * PAGE))
    for says, path in cases.items():
        try:
            user_keys(path)
        except BadDatabase as exc:
            assert says in str(exc), (says, exc)
        else:
            raise AssertionError(f"{path.name}: read as a database")
    (tmp_path / "nothing.db").write_bytes(b"")
    try:
        user_keys(tmp_path / "nothing.db")
    except BadDatabase:
        pass
    else:
        raise AssertionError("an empty file read as a database")
