"""Recovery you can trust under attack: a drill that exposes nothing, bounded extraction, honest errors.

Hostile archives are built byte by byte here, as an attacker who can write to backup-dir (or sit in
front of the service) would build them; the drill runs against a real etcd and Redis.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from cli.recovery import main
from common.etcd import EtcdConnection
from common.queue import enqueue_drill, enqueue_or_join, job_queue
from common.storage import LocalStore
from harness.in_process import Service
from harness.processes import wait_until
from harness.report import Report
from harness.servers import EtcdServer, etcdctl
from recovery.restore import RestoreError, check_data_dir
from recovery.verify import CannotVerify, Expected, VerifyError, verify_archive, verify_file
from recovery.workdir import DRILL_PREFIX, private_workdir, remove_abandoned_workdirs
from worker import drill

NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
ETCD_BACKUP = str(Path(sys.executable).parent / "etcd-backup")


def tar_header(name: bytes, size: int, kind: bytes = b"0") -> bytes:
    """One ustar header block with a correct checksum, declaring whatever it is told to."""
    block = bytearray(512)
    block[0:len(name[:100])] = name[:100]
    block[100:108] = b"0000600\0"
    block[124:136] = f"{size:011o}\0".encode() if size < 8 ** 11 else b"\x80" + size.to_bytes(11, "big")
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[257:263] = b"ustar\0"
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    return bytes(block)


def gzip_of(*parts: bytes) -> bytes:
    return gzip.compress(b"".join(parts), compresslevel=1)


def zero_stream_gzip(size: int) -> bytes:
    """gzip of `size` zero bytes, made a MiB at a time."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as gz:
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            gz.write(block)
    return out.getvalue()


def peak_rss_of_verify(path: Path, tmp_path: Path) -> tuple[int, str, float]:
    """Run `etcd-backup verify` in a process of its own: its exit status, stderr and peak RSS in MiB."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking process (pytest's size).
    script = (f"import sys\nfrom cli.recovery import main\ntry:\n    main(['verify', {str(path)!r}])\nfinally:\n"
              "    hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0].split()[1]\n"
              "    print('PEAK', hwm, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parent.parent, env={**os.environ, "TMPDIR": str(tmp_path)})
    lines = done.stderr.strip().splitlines()
    (peak,) = (int(line.split()[1]) / 1024 for line in lines if line.startswith("PEAK "))
    message = [line for line in lines if not line.startswith("PEAK ")]
    assert len(message) == 1, done.stderr  # one line, no traceback
    return done.returncode, message[0], peak


BOMBS: dict[str, Callable[[], bytes]] = {
    "a GNU long-name header declaring 1 GiB": lambda: gzip_of(tar_header(b"././@LongLink", 1 << 30, b"L"),
                                                              b"x" * 512 * 2048),
    "a PAX header declaring 2 GiB": lambda: gzip_of(tar_header(b"pax", 2 << 30, b"x"), b"x" * 512 * 2048),
    "a sparse member declaring 1 TiB": lambda: gzip_of(tar_header(b"snap.db", 1 << 40, b"S"), bytes(1024)),
    "a .db member declaring 16 GiB (etcd's limit is 8)": lambda: gzip_of(tar_header(b"snap.db", 16 << 30)),
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_a_hostile_archive_is_refused_in_flat_memory(bomb: str, tmp_path: Path, report: Report) -> None:
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(BOMBS[bomb]())
    status, message, peak = peak_rss_of_verify(path, tmp_path)
    assert status == 1, message
    assert message.startswith(f"etcd-backup verify {path}: ")
    assert peak < 120, f"{peak:.0f} MiB"
    assert not list(tmp_path.glob("etcd-backup-verify-*"))
    report(f"`etcd-backup verify` of a {path.stat().st_size >> 10} KiB archive with {bomb}",
           f"exit 1 in flat memory (peak RSS {peak:.0f} MiB): {message.split(': ', 1)[1]!r}")


def test_a_gigabyte_of_zeros_is_refused_against_the_recorded_size(backup: Path, tmp_path: Path,
                                                                  report: Report) -> None:
    """A 1 MB gzip that inflates to 1 GiB, put over a backup whose metadata records its real size."""
    metadata = LocalStore(backup.parent).read_metadata(backup.name)
    assert metadata is not None
    name = backup.name.removesuffix(".tar.gz").encode() + b".db"
    backup.write_bytes(gzip.compress(tar_header(name, 1 << 30)) + zero_stream_gzip(1 << 30))
    work = tmp_path / "work"
    work.mkdir()
    began = time.monotonic()
    with pytest.raises(VerifyError, match="the backup's metadata recorded") as refused:
        verify_file(backup, work, Expected(metadata.db_size, metadata.db_sha256))
    seconds = time.monotonic() - began
    assert seconds < 5 and not list(work.iterdir())
    report("an archive whose .db member declares 1 GiB, over a backup whose metadata records its size",
           f"refused in {seconds:.2f} s before extracting a byte: {str(refused.value)[:120]!r}")


def test_another_clusters_archive_over_the_newest_backup_fails_verify_and_drill(
    service: Service, backup: Path, tmp_path: Path, redis_conn: redis.Redis, report: Report
) -> None:
    """Metadata kept, archive swapped for a good backup of something else: the recorded digest differs."""
    other = EtcdServer(tmp_path / "other" / "data")
    (tmp_path / "other").mkdir()
    other.start()
    try:
        other.client().put("/other/cluster", "x")
        other_backup = tmp_path / "other.tar.gz"
        with private_workdir("etcd-backup-test-") as work:
            etcdctl("snapshot", "save", str(work / "snap.db"), endpoint=other.url)
            with tarfile.open(other_backup, "w:gz") as tar:
                tar.add(work / "snap.db", arcname=backup.name.removesuffix(".tar.gz") + ".db")
    finally:
        other.stop()
    os.replace(other_backup, backup)
    answer = service.client.post(f"/api/v1/backup/{backup.name}/verify")
    result = drill.run_drill(service.config, redis_conn)
    assert answer.status_code == 422, answer.get_json()
    assert "the backup's metadata recorded" in answer.get_json()["message"] or "its SHA-256 is not the one" in \
        answer.get_json()["message"]
    assert not result.passed and ("metadata recorded" in result.reason or "SHA-256 is not" in result.reason)
    report("another cluster's valid backup copied over the newest backup, its metadata kept",
           f"POST .../verify 422 {answer.get_json()['message'][:100]!r}; the drill failed: {result.reason[:100]!r}")


def test_a_second_gzip_member_is_refused(backup: Path, tmp_path: Path) -> None:
    hidden = tmp_path / "hidden.tar.gz"
    with tarfile.open(hidden, "w:gz") as tar:
        info = tarfile.TarInfo("evil.sh")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"id\n"))
    backup.write_bytes(backup.read_bytes() + hidden.read_bytes())
    with pytest.raises(VerifyError, match="more than one gzip member"):
        verify_file(backup, tmp_path)


def test_out_of_space_cut_short_and_corrupt_are_three_answers(backup: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              report: Report) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k,mode=0700", "tmpfs", str(small)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, mounted.stderr
    try:
        with pytest.raises(CannotVerify, match="says nothing about the backup") as full:
            verify_file(backup, small)
    finally:
        subprocess.run(["umount", str(small)], check=True)

    class CutShort(io.RawIOBase):  # a transfer that breaks a third of the way in
        def __init__(self, data: bytes) -> None:
            self.data, self.position = data, 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            if self.position > len(self.data) // 3:
                raise ConnectionResetError("connection reset by peer")
            chunk = self.data[self.position:self.position + min(len(buffer), 4096)]
            buffer[:len(chunk)] = chunk
            self.position += len(chunk)
            return len(chunk)

    (tmp_path / "cut").mkdir()
    with pytest.raises(CannotVerify, match="could not read the backup to its end") as cut:
        verify_archive(io.BufferedReader(CutShort(backup.read_bytes())), tmp_path / "cut")  # type: ignore[arg-type]
    corrupt = tmp_path / "corrupt.tar.gz"
    data = bytearray(backup.read_bytes())
    data[-8] ^= 0xFF  # the gzip CRC-32: always a corruption (a flip in deflate data can be harmless)
    corrupt.write_bytes(bytes(data))
    with pytest.raises(SystemExit) as exit_bad:
        main(["verify", str(corrupt)])
    code = exit_bad.value.code  # status 1 comes as the message itself (sys.exit(message))
    assert isinstance(code, str) and ("not an intact" in code or "trailer" in code), code
    report("verify with no space left to extract, a transfer cut a third of the way in, a corrupt archive",
           f"three answers: {str(full.value)[:90]!r} / {str(cut.value)[:90]!r} (exit 3 from the command) / "
           "exit 1 'not an intact .tar.gz' (only this one says the backup is bad)")



def listening_tcp_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its socket inodes in /proc/net/tcp{,6}, state LISTEN)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _cwd(proc: Path) -> Path | None:
    try:
        return Path(os.readlink(proc / "cwd"))
    except OSError:
        return None


def test_the_drills_etcd_is_reachable_by_the_drill_only(
    service: Service, backup: Path, redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch, report: Report
) -> None:
    """While the drill's etcd runs: no TCP port, and a local other user can neither connect nor read."""
    seen: dict[str, object] = {}
    check_member = drill._check_member

    def attack_then_check(connection: EtcdConnection, *args: object) -> str:
        result = check_member(connection, *args)  # type: ignore[arg-type]  # etcd is up now
        # Its socket is in its work dir, which the client reaches through a symlink in a short private dir.
        link = Path(connection.endpoint.removeprefix("unix://")).parent
        seen["link dir mode"] = oct(link.parent.stat().st_mode & 0o777)
        work = link.resolve()
        etcd_pids = [int(proc.name) for proc in Path("/proc").iterdir()
                     if proc.name.isdigit() and _cwd(proc) == work]
        assert etcd_pids, f"no process runs in {work}"
        seen["ports"] = set().union(*(listening_tcp_ports(pid) for pid in etcd_pids))
        seen["mode"] = oct(work.stat().st_mode & 0o777)
        probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n"
                 "    print('connected')\nexcept OSError as e:\n    print(e.strerror)\n")
        nobody = subprocess.run([*AS_NOBODY, sys.executable, "-c", probe, str(work / "client:1")],
                                capture_output=True, text=True)
        seen["nobody"] = nobody.stdout.strip() or nobody.stderr.strip()
        listing = subprocess.run([*AS_NOBODY, "ls", str(work)], capture_output=True, text=True)
        seen["ls"] = listing.returncode
        return result

    monkeypatch.setattr(drill, "_check_member", attack_then_check)
    result = drill.run_drill(service.config, redis_conn)
    assert result.passed, result.reason
    assert seen["ports"] == set(), seen
    assert seen["mode"] == seen["link dir mode"] == "0o700", seen
    assert seen["nobody"] == "Permission denied" and seen["ls"] != 0, seen
    report("while a restore drill's etcd runs, a local user (nobody) looks for it: TCP ports, its socket, its dir",
           f"no TCP port open; the work dir is {seen['mode']}; connecting to its unix socket as nobody: "
           f"{seen['nobody']}; listing the dir: refused; the drill passed")


def test_a_drill_killed_with_its_worker_leaves_nothing_after_the_next_start(tmp_path: Path, report: Report) -> None:
    """A worker killed -9 mid-drill: its etcd dies with it; the next worker start removes the work dir."""
    base = tmp_path / "tmp"
    base.mkdir()
    script = ("import os, subprocess, sys, time\nfrom recovery.workdir import private_workdir\n"
              f"with private_workdir({DRILL_PREFIX!r}) as work:\n"
              "    (work / 'db').write_bytes(b'every Secret')\n"
              "    subprocess.Popen(['setpriv', '--pdeathsig', 'KILL', '--', 'sleep', '600'], cwd=work)\n"
              "    print(work, flush=True)\n    time.sleep(600)\n")
    worker = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parent.parent, env={**os.environ, "TMPDIR": str(base)})
    assert worker.stdout is not None
    work = Path(worker.stdout.readline().strip())
    time.sleep(0.5)
    assert remove_abandoned_workdirs(base) == [] and work.exists()  # in use: left alone
    worker.kill()
    worker.wait()
    worker.stdout.close()
    time.sleep(0.5)
    sleepers = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True).stdout.split()
    cwd_sleepers = [pid for pid in sleepers if Path(f"/proc/{pid}/cwd").exists()
                    and os.readlink(f"/proc/{pid}/cwd") == str(work)]
    assert cwd_sleepers == []  # the child died with its parent
    assert remove_abandoned_workdirs(base) == [work] and not work.exists()
    report("a worker SIGKILLed in the middle of a drill (its etcd running in the work dir, the database in it)",
           "the etcd died with the worker (PDEATHSIG); the next worker start removed the work dir; a work dir "
           "still in use is left alone")


def test_a_drill_of_a_cluster_with_auth_passes(tmp_path: Path, make_service: Callable[..., Service],
                                              redis_conn: redis.Redis, report: Report) -> None:
    secured = EtcdServer(tmp_path / "secured" / "data")
    (tmp_path / "secured").mkdir()
    secured.start()
    try:
        etcdctl("user", "add", "root:root-password", endpoint=secured.url)
        etcdctl("auth", "enable", endpoint=secured.url)
        service = make_service(etcd_overrides={"endpoints": [secured.url], "username": "root",
                                               "password": "root-password"})
        assert service.client.post("/api/v1/backup").status_code == 200
        result = drill.run_drill(service.config, redis_conn)
        # A certificate user's config has no username/password: the drill cannot log in on its socket.
        anonymous = replace(service.config, etcd=replace(service.config.etcd, username=None, password=None))
        began = time.monotonic()
        without = drill.run_drill(anonymous, redis_conn)
        seconds = time.monotonic() - began
    finally:
        secured.stop()
    assert result.passed, result.reason
    assert without.passed and "its keys were not counted" in without.reason and seconds < 30, without
    report("restore drill of a cluster with etcd auth enabled; then with no username/password in the config "
           "(a certificate user)", f"passed: {result.reason}; without credentials, passed in {seconds:.1f} s: "
           f"{without.reason!r}")


def test_a_compaction_between_proof_and_snapshot_does_not_fail_the_drill(
    service: Service, etcd: EtcdServer, redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch, report: Report
) -> None:
    client = etcd.client()
    for number in range(5):
        client.put("/compacted/key", f"value-{number}")
    snapshot = EtcdConnection.snapshot

    def compact_first(connection: EtcdConnection) -> object:
        # Another client compacts at the newest revision in the gap between the proof and the stream.
        client.put("/compacted/key", "last")
        etcdctl("compaction", str(_revision(etcd)), endpoint=etcd.url)
        return snapshot(connection)

    monkeypatch.setattr(EtcdConnection, "snapshot", compact_first)
    assert service.client.post("/api/v1/backup").status_code == 200
    monkeypatch.undo()
    result = drill.run_drill(service.config, redis_conn)
    assert result.passed and "is compacted in the snapshot" in result.reason, result
    report("a compaction past the recorded revision between the quorum proof and the snapshot",
           f"the drill passed: {result.reason!r}")


def _revision(member: EtcdServer) -> int:
    return int(json.loads(etcdctl("endpoint", "status", "-w", "json", endpoint=member.url).stdout)[0]["Status"]
               ["header"]["revision"])


def test_a_drill_that_breaks_is_recorded_as_failed(service: Service, backup: Path, redis_conn: redis.Redis,
                                                   monkeypatch: pytest.MonkeyPatch, report: Report) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("something unexpected")

    monkeypatch.setattr(drill, "restore", broken)
    result = drill.run_drill(service.config, redis_conn)
    assert not result.passed and "the drill broke: RuntimeError: something unexpected" in result.reason
    assert "etcd_backup_last_drill_passed 0.0" in service.client.get("/metrics").get_data(as_text=True)
    metadata = LocalStore(backup.parent).read_metadata(backup.name)
    assert metadata is not None and metadata.drill is not None and metadata.drill["outcome"] == "failed"
    report("a restore drill that hits an unexpected exception", f"recorded as failed: {result.reason!r}")


def test_drills_coalesce_and_never_go_before_a_backup(make_service: Callable[..., Service]) -> None:
    service = make_service(worker=False)
    queue = job_queue(service.connection)
    first, second = enqueue_drill(queue), enqueue_drill(queue)
    backup_job = enqueue_or_join(queue)
    assert first.id == second.id
    assert queue.job_ids == [backup_job.id, first.id]


@pytest.mark.parametrize("kind", ["a symlink", "a file", "under /proc", "a mount point"])
def test_restore_refuses_a_bad_data_dir_before_anything_else(kind: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    if kind == "a symlink":
        (tmp_path / "elsewhere").mkdir()
        data_dir.symlink_to(tmp_path / "elsewhere")
    elif kind == "a file":
        data_dir.write_text("x")
    elif kind == "under /proc":
        data_dir = Path("/proc/self/etcd")
    else:
        data_dir.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(data_dir)], check=True)
    try:
        with pytest.raises(RestoreError):
            check_data_dir(data_dir)
        with pytest.raises(SystemExit) as exited:  # the source does not even exist: the data dir is refused first
            main(["restore", str(tmp_path / "missing.tar.gz"), "--data-dir", str(data_dir)])
    finally:
        if kind == "a mount point":
            subprocess.run(["umount", str(data_dir)], check=True)
    assert isinstance(exited.value.code, str) and str(data_dir) in exited.value.code, exited.value.code
    assert "\n" not in exited.value.code and "Traceback" not in capsys.readouterr().err


def test_a_sigterm_to_verify_leaves_no_extracted_database(big_backup: Path, tmp_path: Path, report: Report) -> None:
    verifier = subprocess.Popen([ETCD_BACKUP, "verify", str(big_backup)],
                                cwd=Path(__file__).parent.parent, env={**os.environ, "TMPDIR": str(tmp_path)},
                                stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not any(tmp_path.glob("etcd-backup-verify-*/*.db")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(tmp_path.glob("etcd-backup-verify-*/*.db")), "the extraction never started"
    verifier.send_signal(signal.SIGTERM)
    verifier.wait(30)
    assert not list(tmp_path.glob("etcd-backup-verify-*"))
    report("SIGTERM to `etcd-backup verify` in the middle of extracting a 150 MB backup",
           f"exited {verifier.returncode}; no extracted database (nor its dir) left in the temp dir")


@pytest.fixture(scope="module")
def big_backup(big_etcd: EtcdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 150 MB etcd's snapshot as an archive (etcdctl + tar): long enough to be interrupted."""
    work = tmp_path_factory.mktemp("big-backup")
    etcdctl("snapshot", "save", str(work / "snapshot-20260101_000000.db"), endpoint=big_etcd.url)
    archive = work / "snapshot-20260101_000000.tar.gz"
    subprocess.run(["tar", "-C", str(work), "-czf", str(archive), "snapshot-20260101_000000.db"], check=True)
    (work / "snapshot-20260101_000000.db").unlink()
    yield archive



def test_the_verify_endpoint_without_space_to_extract_says_no_verdict(
    service: Service, backup: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, report: Report
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k,mode=0700", "tmpfs", str(small)], check=True)
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(small))  # the worker thread's temp dir
        answer = service.client.post(f"/api/v1/backup/{backup.name}/verify")
    finally:
        subprocess.run(["umount", str(small)], check=True)
    message = answer.get_json()["message"]
    assert answer.status_code == 500 and message.startswith("could not verify the backup: "), message
    assert "says nothing about the backup" in message
    report("POST .../verify when the worker has no space to extract the database",
           f"500 (not 422: no verdict on the backup): {message[:110]!r}")


ODD_NAMES = {
    "a PAX path with a NUL byte": gzip_of(tar_header(b"pax", 22, b"x"), b"22 path=snap\x00shot.db\n".ljust(512, b"\0"),
                                          tar_header(b"x.db", 64), bytes(512)),
    "a 300-character .db name": gzip_of(tar_header(b"././@LongLink", 304, b"L"),
                                        (b"a" * 300 + b".db").ljust(512, b"\0"), tar_header(b"x.db", 64), bytes(512)),
    "a .db of zeros, not bbolt": gzip_of(tar_header(b"snap.db", 64), bytes(512), bytes(1024)),
}


@pytest.mark.parametrize("odd", ODD_NAMES)
def test_an_odd_archive_is_a_bad_backup_in_one_line(odd: str, tmp_path: Path, report: Report) -> None:
    path = tmp_path / "odd.tar.gz"
    path.write_bytes(ODD_NAMES[odd])
    status, message, _ = peak_rss_of_verify(path, tmp_path)
    assert status == 1, message  # the backup is bad: not 3 (no verdict), not a traceback
    assert not list(tmp_path.glob("etcd-backup-verify-*"))
    report(f"`etcd-backup verify` of an archive with {odd}", f"exit 1, one line: {message.split(': ', 1)[1]!r}")


def test_two_restores_into_one_data_dir_never_lose_it(backup: Path, tmp_path: Path, report: Report) -> None:
    """Two restores at once into the same new data dir: one wins; the other fails without touching it."""
    outcomes: Counter[str] = Counter()
    for round_ in range(5):
        data_dir = tmp_path / f"round{round_}" / "data"
        data_dir.parent.mkdir()
        results: list[int] = []

        def restore_it(results: list[int] = results, data_dir: Path = data_dir) -> None:
            done = subprocess.run([ETCD_BACKUP, "restore", str(backup), "--data-dir", str(data_dir)],
                                  capture_output=True, text=True, timeout=120)
            results.append(done.returncode)

        threads = [threading.Thread(target=restore_it) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        outcomes[",".join(map(str, sorted(results)))] += 1
        assert 0 in results and (data_dir / "member").is_dir(), results  # a success always left its data dir
        assert not list(data_dir.parent.glob(".etcd-backup-restore-*"))
    report("two `etcd-backup restore` into the same new data dir at once, 5 rounds",
           f"exit statuses {dict(outcomes)}: every round one restore won and its data dir is there; the other "
           "failed without touching it")


def test_a_restore_killed_outright_takes_etcds_tool_with_it(backup: Path, tmp_path: Path, report: Report) -> None:
    """kill -9 while etcd's tool restores the snapshot: the tool dies with the restore (PDEATHSIG). Left running, it
    would go on writing the database into a work dir that the next restore removes, and leave it unremovable."""
    real = shutil.which("etcdutl") or shutil.which("etcdctl")
    assert real is not None
    tools = tmp_path / "bin"
    tools.mkdir()
    pid_file = tmp_path / "tool.pid"
    # etcd's tool as found on the PATH, but asleep (as itself: exec keeps the pid and PDEATHSIG) when it restores.
    (tools / Path(real).name).write_text(f'#!/bin/sh\nif [ "$1 $2" = "snapshot restore" ]; then\n'
                                         f'  echo $$ > {pid_file}; exec sleep 600\nfi\nexec {real} "$@"\n')
    (tools / Path(real).name).chmod(0o755)
    restore = subprocess.Popen([ETCD_BACKUP, "restore", str(backup), "--data-dir", str(tmp_path / "restored")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"})
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", 60, "the tool restoring",
                   restore)
        tool = int(pid_file.read_text())
    finally:
        restore.kill()
        restore.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{tool}").exists() and "\nState:\tZ" not in Path(f"/proc/{tool}/status").read_text():
        assert time.monotonic() < deadline, f"etcd's tool {tool} outlived the restore killed -9"
        time.sleep(0.05)
    report("`etcd-backup restore` killed -9 while etcd's tool restores the snapshot into its work dir",
           "the tool was killed with it (PR_SET_PDEATHSIG): nothing writes into the dir the next restore removes")
