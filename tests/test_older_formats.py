"""`verify` and `restore` of the backups people bring from elsewhere: a snapshot as `etcdctl snapshot save`
writes it (.db) and gzip'd (.db.gz, what the original Go etcd-backup wrote). The service's own stored
backups stay .tar.gz (or .tar.gz.age): a raw snapshot planted under a backup's name is refused."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

from harness.cli import etcd_backup
from harness.in_process import Service
from harness.report import Report
from harness.servers import EtcdServer, etcdctl, restored_keys


def test_a_db_and_a_db_gz_verify_and_restore(etcd: EtcdServer, tmp_path: Path, report: Report) -> None:
    client = etcd.client()
    written = {f"/older/key-{number}": f"value-{number}".encode() for number in range(30)}
    for key, value in written.items():
        client.put(key, value)
    client.close()
    saved = tmp_path / "etcdctl.db"
    etcdctl("snapshot", "save", str(saved), endpoint=etcd.url)
    packed = tmp_path / "snapshot-20181220_024105.db.gz"
    packed.write_bytes(gzip.compress(saved.read_bytes(), compresslevel=1))

    verdicts = {}
    for path in (saved, packed):
        done = etcd_backup("verify", str(path))
        assert done.returncode == 0 and "good: revision" in done.stdout, done.stderr
        verdicts[path.suffix] = done.stdout.strip().split(": ", 1)[1][:40]
    data_dir = tmp_path / "restored"
    done = etcd_backup("restore", str(packed), "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    assert restored_keys(data_dir, "/older/") == written

    # What is not one: no trailer (a database copied from a data dir), a byte flipped, a cut gzip.
    raw = saved.read_bytes()
    refusals = {}
    cases = {"no-trailer.db": raw[:-32], "flipped.db": raw[:5000] + bytes([raw[5000] ^ 1]) + raw[5001:],
             "cut.db.gz": packed.read_bytes()[:-100]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        done = etcd_backup("verify", str(tmp_path / name))
        assert done.returncode == 1, (name, done.stdout, done.stderr)
        refusals[name] = done.stderr.strip().split(": ", 1)[1][:70]
    assert "no snapshot with a SHA-256 trailer" in refusals["no-trailer.db"]
    assert "trailer does not match" in refusals["flipped.db"]
    assert "ends before its end marker" in refusals["cut.db.gz"]
    report("`verify` of an `etcdctl snapshot save` file (.db) and of it gzip'd (.db.gz, the original's format), "
           "`restore` of the .db.gz; then a .db without its trailer, one with a byte flipped, a cut .db.gz",
           f"verify exit 0 ({verdicts['.db']}...; the same for .db.gz), restore exit 0 and the restored etcd serves "
           f"all {len(written)} keys; refused with exit 1: {refusals}")


def test_a_raw_snapshot_under_a_backup_name_is_not_a_backup_of_the_service(
        make_service: Callable[..., Service], etcd: EtcdServer, tmp_path: Path) -> None:
    service = make_service()
    saved = tmp_path / "etcdctl.db"
    etcdctl("snapshot", "save", str(saved), endpoint=etcd.url)
    name = "snapshot-20200101_000000.tar.gz"
    service.plant(name, gzip.compress(saved.read_bytes()))
    answer = service.client.post(f"/api/v1/backup/{name}/verify")
    # The bbolt pages read as a tar header: its checksum cannot match.
    assert answer.status_code == 422, answer.get_json()
    assert answer.get_json()["message"] == ("backup verification failed: not an intact .tar.gz: a tar header's "
                                            "checksum does not match")
