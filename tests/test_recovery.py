"""Verify, restore, the restore drill and the download client, against real backups, etcdctl and etcd."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from cli.main import main
from common.queue import DRILL_JOB
from common.storage import LocalStore
from harness.deployment import Deployment
from harness.in_process import Service
from harness.processes import wait_until
from harness.report import Report
from harness.servers import EtcdServer
from recovery.client import Client
from recovery.restore import Member, restore
from recovery.verify import VerifyError, extract_file, verify_file
from scheduler.cron import run_drill_tick
from tests.test_schedule import TICK
from worker.drill import run_drill


def snapshot_of(archive: Path) -> tuple[str, bytes]:
    with tarfile.open(archive) as tar:
        member = tar.getmembers()[0]
        return member.name, tar.extractfile(member).read()  # type: ignore[union-attr]


def write_tar_gz(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_verify_a_good_backup(backup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    verified = verify_file(backup, tmp_path)
    metadata = LocalStore(backup.parent).read_metadata(backup.name)
    assert metadata is not None
    assert verified.revision == metadata.revision and verified.db_sha256 == metadata.db_sha256
    assert verified.total_keys > 0 and verified.total_size == metadata.db_size
    main(["verify", str(backup)])
    assert capsys.readouterr().out.startswith(f"{backup}: good: revision {metadata.revision}, ")


BBOLT_LOOKALIKE = (bytes(8) + (4).to_bytes(2, "little") + bytes(6) + (0xED0CDAED).to_bytes(4, "little")
                   + b"\x07" * 16364)
"""A meta page's flags and magic number, then garbage: past verify's own check, refused by etcd's tool."""

BAD_BACKUPS: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "corrupt compressed data": (lambda good, path: _write(path, _flip_archive(good.read_bytes())),
                                "not an intact .tar.gz"),
    "truncated": (lambda good, path: _write(path, good.read_bytes()[: good.stat().st_size // 2]),
                  "not an intact .tar.gz"),
    "a flipped byte in the db": (lambda good, path: write_tar_gz(path, [_flip(snapshot_of(good), 5000)]),
                                 "the SHA-256 trailer does not match the data"),
    "a bad trailer": (lambda good, path: write_tar_gz(path, [_flip(snapshot_of(good), -1)]),
                      "the SHA-256 trailer does not match the data"),
    "not gzip": (lambda good, path: _write(path, b"just some text\n" * 100), "not an intact .tar.gz"),
    "extra members": (lambda good, path: write_tar_gz(path, [snapshot_of(good), ("notes.txt", b"hi")]),
                      "found another member 'notes.txt'"),
    "not a .db member": (lambda good, path: write_tar_gz(path, [("etc/passwd", b"root:x:0:0")]),
                         "expected one snapshot file (*.db), found 'etc/passwd'"),
    "a database etcd cannot read": (lambda good, path: write_tar_gz(path, [_with_trailer(BBOLT_LOOKALIKE)]),
                                    "snapshot status refused the database"),
    "no bbolt database at all": (lambda good, path: write_tar_gz(path, [_with_trailer(bytes(16384))]),
                                 "is not an etcd database"),
}


@pytest.mark.parametrize("kind", BAD_BACKUPS)
def test_verify_refuses_a_bad_backup(backup: Path, tmp_path: Path, kind: str, report: Report,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    make, words = BAD_BACKUPS[kind]
    bad = make(backup, tmp_path / "bad.tar.gz")
    with pytest.raises(VerifyError, match=words.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        verify_file(bad, tmp_path)
    with pytest.raises(SystemExit) as exit_status:
        main(["verify", str(bad)])
    assert words in str(exit_status.value.code)  # sys.exit(message): status 1, the message on stderr
    report(f"`etcd-backup verify` on a backup with {kind}", f"exit status 1: \"{exit_status.value.code}\"")


@pytest.mark.parametrize("kind", BAD_BACKUPS)
def test_restore_refuses_a_bad_backup_and_leaves_no_data_dir(backup: Path, tmp_path: Path, kind: str) -> None:
    """etcd's reading of the database (snapshot status) runs beside etcd's restore: a database it refuses is refused
    with its words, whatever etcd's restore made of it, and the data dir never takes it."""
    make, words = BAD_BACKUPS[kind]
    place = tmp_path / "restore-here"
    place.mkdir()
    bad = make(backup, place / "bad.tar.gz")
    with pytest.raises(SystemExit) as exit_status:
        main(["restore", str(bad), "--data-dir", str(place / "restored")])
    assert words in str(exit_status.value.code)
    assert sorted(path.name for path in place.iterdir()) == ["bad.tar.gz"]  # no data dir, no work or staging dir


def test_a_check_beside_etcds_restore_is_waited_for_before_the_data_dir_takes_the_data(backup: Path,
                                                                                        tmp_path: Path) -> None:
    place = tmp_path / "restore-here"
    work = place / "work"
    work.mkdir(parents=True)
    extracted = extract_file(backup, work)
    data_dir = place / "restored"
    staged: list[list[Path]] = []

    def refuse() -> None:
        staged.append(list(place.glob("*/data/member")))  # etcd's tool has restored, into a staging dir
        raise VerifyError("refused beside the restore")

    with pytest.raises(VerifyError, match="refused beside the restore"):
        restore(extracted.db_path, data_dir, Member(), before_rename=refuse)
    assert staged and staged[0] and not data_dir.exists()
    assert sorted(path.name for path in place.iterdir()) == ["work"]  # the staging dir went too
    restore(extracted.db_path, data_dir, Member(), before_rename=lambda: staged.append([]))
    assert (data_dir / "member" / "snap" / "db").is_file() and len(staged) == 2


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _flip_archive(data: bytes) -> bytes:
    """Flip bytes all through the deflate data (not the 10-byte gzip header): the archive cannot decompress."""
    changed = bytearray(data)
    for offset in range(20, len(changed) - 8, 97):
        changed[offset] ^= 0x55
    return bytes(changed)


def _flip(member: tuple[str, bytes], offset: int) -> tuple[str, bytes]:
    name, data = member
    changed = bytearray(data)
    changed[offset] ^= 0xFF
    return name, bytes(changed)


def _with_trailer(data: bytes) -> tuple[str, bytes]:
    return "snapshot-20260101_000000.db", data + hashlib.sha256(data).digest()


def test_restore_then_etcd_serves_the_keys(backup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           report: Report) -> None:
    restored = EtcdServer(tmp_path / "restored", name="restored")
    main(["restore", str(backup), "--data-dir", str(restored.data_dir), "--name", "restored",
          "--initial-cluster", f"restored={restored.peer_url}", "--initial-advertise-peer-urls", restored.peer_url])
    out = capsys.readouterr().out
    assert "running: " in out and " snapshot restore " in out and "restored into" in out
    restored.initial_cluster = f"restored={restored.peer_url}"
    restored.start()
    try:
        values = {key.key.decode(): value.decode() for value, key in restored.client().get_prefix("/recovery/")}
    finally:
        restored.stop()
    assert values == {f"/recovery/key-{n}": f"value-{n}" for n in range(10)}
    with pytest.raises(SystemExit) as refused:
        main(["restore", str(backup), "--data-dir", str(restored.data_dir)])
    assert "exists and is not empty: refusing to touch it" in str(refused.value.code)
    report("`etcd-backup restore` of a real backup, then etcd started on the data dir",
           "etcdctl snapshot restore ran (command printed); the restored etcd served all 10 keys written before the "
           "backup; a second restore into the same (now non-empty) dir was refused")


def test_drill_passes_then_fails_on_a_corrupt_backup(service: Service, backup: Path, redis_conn: redis.Redis,
                                                     report: Report) -> None:
    passed = run_drill(service.config, redis_conn)
    assert passed.passed, passed.reason
    assert passed.backup == backup.name and "keys, as recorded" in passed.reason
    metadata = LocalStore(backup.parent).read_metadata(backup.name)
    assert metadata is not None and metadata.drill is not None and metadata.drill["outcome"] == "passed"
    detail = service.client.get("/api/v1/backup?detail=true").get_json()
    assert detail[-1]["drill"]["outcome"] == "passed"
    metrics = service.client.get("/metrics").get_data(as_text=True)
    assert "etcd_backup_last_drill_passed 1.0" in metrics
    assert "etcd_backup_last_drill_success_timestamp_seconds" in metrics

    data = bytearray(backup.read_bytes())
    data[-8] ^= 0xFF  # the gzip CRC-32: always a corruption (a flip in deflate data can be harmless)
    backup.write_bytes(bytes(data))
    failed = run_drill(service.config, redis_conn)
    assert not failed.passed and failed.backup == backup.name
    assert "not an intact .tar.gz" in failed.reason or "trailer does not match" in failed.reason
    assert "etcd_backup_last_drill_passed 0.0" in service.client.get("/metrics").get_data(as_text=True)
    report("restore drill of the newest backup, then of the same backup with its CRC-32 flipped",
           f"passed in {passed.seconds:.1f} s ({passed.reason}); then failed: \"{failed.reason}\"; both recorded "
           "in the backup's metadata (?detail=true) and /metrics")


def test_a_drill_tick_queues_a_drill_that_a_worker_runs(service: Service, backup: Path,
                                                        redis_conn: redis.Redis) -> None:
    job = run_drill_tick(service.config, redis_conn, TICK, "scheduler-a")
    assert job is not None and job.func_name == DRILL_JOB
    assert run_drill_tick(service.config, redis_conn, TICK, "scheduler-b") is None
    result = job.latest_result(timeout=60)
    assert result is not None and result.return_value["passed"] is True, result and result.exc_string


@pytest.mark.slow
def test_download_client_resumes_a_cut_download(tmp_path: Path, etcd: EtcdServer, report: Report) -> None:
    deployment = Deployment(tmp_path / "service", [etcd.url]).start()
    try:
        name = deployment.post_backup()["filename"]
        original = (deployment.backup_dir / name).read_bytes()
        client = Client(deployment.base)
        assert client.list() == [name]
        target = tmp_path / "downloads"
        target.mkdir()
        (target / f"{name}.part").write_bytes(original[: len(original) // 3])  # a download cut at a third
        progress = io.StringIO()
        path = client.download("latest", target, progress=progress)
        assert path == target / name and path.read_bytes() == original
        assert not (target / f"{name}.part").exists()
        # The server sent only the rest (gunicorn logs the request once its answer is sent: wait for it).
        wait_until(lambda: '" 206 ' in (deployment.work / "web.log").read_text(), 10, "the 206 in the access log")
    finally:
        deployment.stop()
    report("`etcd-backup download latest` with a .part file left by a cut download",
           "resumed with Range (206), the result byte-identical to the backup")


def test_verify_json_is_what_snapshot_status_says(backup: Path, tmp_path: Path) -> None:
    """The report's numbers are etcdctl's, not computed here."""
    db = tmp_path / "snapshot.db"
    db.write_bytes(snapshot_of(backup)[1])
    status = json.loads(subprocess.run(["etcdctl", "snapshot", "status", str(db), "-w", "json"],
                                       capture_output=True, text=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin"},
                                       check=True).stdout)
    work = tmp_path / "verify"
    work.mkdir()
    verified = verify_file(backup, work)
    assert (verified.revision, verified.total_keys, verified.hash) == (
        status["revision"], status["totalKey"], status["hash"])


def test_verify_endpoint(service: Service, backup: Path, report: Report) -> None:
    response = service.client.post(f"/api/v1/backup/{backup.name}/verify")
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    metadata = LocalStore(backup.parent).read_metadata(backup.name)
    assert metadata is not None
    assert answer["message"] == "backup verified" and answer["filename"] == backup.name
    assert answer["revision"] == metadata.revision and answer["db_sha256"] == metadata.db_sha256
    assert service.client.post("/api/v1/backup/snapshot-20200101_000000.tar.gz/verify").status_code == 404
    assert service.client.post("/api/v1/backup/../../etc/passwd/verify").status_code == 400
    data = bytearray(backup.read_bytes())
    # The gzip trailer's CRC-32: a flip inside the deflate data can be harmless (a code of a Huffman
    # table no symbol uses), as one at -100 was; this one never is.
    data[-8] ^= 0xFF
    backup.write_bytes(bytes(data))
    bad = service.client.post(f"/api/v1/backup/{backup.name}/verify")
    assert bad.status_code == 422, bad.get_json()
    assert bad.get_json()["message"].startswith("backup verification failed: not an intact .tar.gz")
    report("POST /api/v1/backup/<name>/verify on a good backup, then on the same with its CRC-32 flipped",
           f"200 with revision {answer['revision']} and the SHA-256; then 422 \"{bad.get_json()['message']}\"")


@pytest.mark.slow
def test_restore_a_three_member_cluster(backup: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        report: Report) -> None:
    """The README's cluster steps: the same backup on every member, then all started together."""
    members = [EtcdServer(tmp_path / f"member{n}", name=f"member{n}") for n in range(3)]
    initial_cluster = ",".join(f"{member.name}={member.peer_url}" for member in members)
    for member in members:
        main(["restore", str(backup), "--data-dir", str(member.data_dir), "--name", member.name,
              "--initial-advertise-peer-urls", member.peer_url, "--initial-cluster", initial_cluster,
              "--initial-cluster-token", "restored-cluster"])
        member.initial_cluster = initial_cluster
        member.extra_args = ["--initial-cluster-token", "restored-cluster"]
    capsys.readouterr()
    for member in members:
        member.launch()
    try:
        for member in members:
            assert member.proc is not None
            wait_until(member.healthy, 60, f"restored member {member.name}", member.proc)
        values = {key.key.decode(): value.decode() for value, key in members[2].client().get_prefix("/recovery/")}
        member_list = members[0].client().members
        assert len(list(member_list)) == 3
    finally:
        for member in members:
            member.stop()
    assert values == {f"/recovery/key-{n}": f"value-{n}" for n in range(10)}
    report("`etcd-backup restore` of one backup on 3 members (README's cluster steps), then all started",
           "a healthy 3-member cluster serving the 10 keys written before the backup")
