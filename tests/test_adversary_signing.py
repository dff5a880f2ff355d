"""An adversary against `signing` (common.signing, common.storage.authenticated): whoever can write the store (files
in backup-dir, objects in the bucket) but holds no signing key, trying what the signed-store tests do not: archives
swapped for other genuine archives of the very same size, names taken ahead of the next backup, deltas deleted
around a moment, symlinks, replays under a backup's own name, hostile metadata files, and thousands of planted names.

Breaks are strict xfails (asserting the promise: the fix flips them); attacks that hold are plain tests with a
report row."""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from common import backups
from common.deltas import decode_delta, parse_delta_name
from harness.cli import etcd_backup
from harness.in_process import Service, served_over_http
from harness.keys import signing
from harness.report import Report
from harness.s3 import S3Server
from harness.servers import EtcdServer
from harness.writer import current_revision
from recovery.pitr import Target, plan_restore
from recovery.restore import RestoreError
from tests.test_deltas import restored, wait_stored, watcher
from worker.drill import run_drill

pytestmark = pytest.mark.xdist_group("point-in-time")
REFUSED = re.compile("replaced or damaged|not the snapshot that was taken")
"""What a reader says of an archive that is not the one its signed metadata records (its database's size or
digest, or the archive's own SHA-256)."""


# --- helpers ------------------------------------------------------------------------------------------------------


def signed(make_service: Callable[..., Service], tmp_path: Path, **overrides: Any) -> Service:
    return make_service(signing=signing(tmp_path), **overrides)


@pytest.fixture
def small_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """An etcd of each test's own: the swap needs a newer backup bigger than the older one, which an etcd whose
    database holds freed pages of earlier random values does not always give (the newer value may fill them: a CI
    run saw the older archive 3.6 KB bigger when this etcd was shared by the module's tests in random order)."""
    server = EtcdServer(tmp_path_factory.mktemp("small-etcd") / "data").start()
    yield server
    server.stop()


def padded_archive(archive: bytes, size: int) -> bytes:
    """`archive` (a .tar.gz), re-gzipped to exactly `size` bytes: the same tar, a gzip comment (FCOMMENT) as padding.
    Any gzip reader takes it; what it holds is the tar of `archive`."""
    tar = gzip.decompress(archive)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = compressor.compress(tar) + compressor.flush()
    trailer = struct.pack("<II", zlib.crc32(tar), len(tar) & 0xFFFFFFFF)
    header = b"\x1f\x8b\x08\x10" + struct.pack("<I", 0) + b"\x00\xff"  # FLG: FCOMMENT
    padding = size - len(header) - 1 - len(deflated) - len(trailer)
    assert padding >= 0, f"{len(archive)} bytes do not fit in {size}"
    padded = header + b"A" * padding + b"\x00" + deflated + trailer
    assert len(padded) == size and gzip.decompress(padded) == tar
    return padded


def two_backups_then_swap(service: Service, etcd: EtcdServer, prefix: str) -> tuple[str, str]:
    """An older backup (k=old), a newer, bigger one (k=new and 300 KB of random bytes); then the newer one's
    archive replaced by the older one's, padded to the newer one's size: a rollback the size check cannot see.
    Returns (older, newer)."""
    client = etcd.client()
    client.put(prefix + "k", "old")
    older = service.client.post("/api/v1/backup").get_json()["filename"]
    client.put(prefix + "k", "new")
    client.put(prefix + "blob", os.urandom(300 << 10))
    newer = service.client.post("/api/v1/backup").get_json()["filename"]
    genuine = service.peek(newer)
    assert genuine is not None
    swapped = padded_archive(service.peek(older) or b"", len(genuine))
    store = service.backend
    if hasattr(store, "directory"):  # a new file under the name, as a writer of the directory would put it
        path = store.directory / newer
        path.unlink()
        path.write_bytes(swapped)
        path.chmod(0o600)
    else:
        service.plant(newer, swapped)
    assert service.client.get("/api/v1/backup").get_json()[-1] == newer  # the size check lets it through
    return older, newer


# --- 1. an archive swapped for another genuine archive of the same size ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "seaweedfs"])
def test_a_same_size_swapped_archive_is_refused_by_download_verify_drill_and_to_time(
        backend: str, make_service: Callable[..., Service], seaweedfs: S3Server, small_etcd: EtcdServer,
        redis_conn: redis.Redis, tmp_path: Path, report: Report) -> None:
    extra = seaweedfs.settings(*seaweedfs.place()) if backend == "seaweedfs" else {}
    service = signed(make_service, tmp_path, etcd_overrides={"endpoints": [small_etcd.url]}, **extra)
    prefix = f"/adv-sign-swap-{tmp_path.name}/"
    older, newer = two_backups_then_swap(service, small_etcd, prefix)

    # `download latest`: the client checks the SHA-256 the service sends (the signed metadata's).
    with served_over_http(service) as url:
        out = tmp_path / "downloads"
        out.mkdir()
        done = etcd_backup("download", "latest", "--url", url, "--output-dir", str(out))
        assert done.returncode == 1 and "its SHA-256 is" in done.stderr, (done.returncode, done.stderr)
        assert not (out / newer).exists()
        # A resumed download (a genuine prefix kept from before the swap, the rest by Range) is checked whole too.
        (out / (newer + ".part")).write_bytes(service.peek(older) or b"")
        resumed = etcd_backup("download", newer, "--url", url, "--output-dir", str(out))
        assert resumed.returncode == 1 and "SHA-256" in resumed.stderr, resumed.stderr

    # The verify job (the worker hashes the archive against the signed metadata).
    answer = service.client.post(f"/api/v1/backup/{newer}/verify")
    assert answer.status_code != 200 and REFUSED.search(json.dumps(answer.get_json())), answer.get_json()
    # The drill (of the newest: the swapped one).
    drilled = run_drill(service.config, redis_conn)
    assert drilled.backup == newer and not drilled.passed and REFUSED.search(drilled.reason), drilled
    # restore --to-time now: from the store, the archive is hashed as it is read.
    refused = etcd_backup("restore", "--config", str(tmp_path / "config.yml"), "--to-time",
                          datetime.now(UTC).isoformat(), "--data-dir", str(tmp_path / "pitr"), timeout=120)
    assert refused.returncode == 1 and REFUSED.search(refused.stderr), refused.stderr
    assert not (tmp_path / "pitr").exists() or not any((tmp_path / "pitr").iterdir())
    report(f"[{backend}] with signing: the newest backup's archive replaced by the older backup's archive "
           "re-gzipped with a gzip comment to exactly the newest's size (a rollback the size check cannot see)",
           "listed as the newest (size matches); `download latest` and a resumed download exit 1 (SHA-256 "
           "mismatch, nothing kept); the verify job, the drill and `restore --to-time now` refuse it: "
           "'not the snapshot that was taken' (the database size and SHA-256 in the signed metadata)")


@pytest.mark.slow
def test_restore_from_the_apis_url_refuses_a_same_size_swapped_archive(
        make_service: Callable[..., Service], small_etcd: EtcdServer, tmp_path: Path) -> None:
    service = signed(make_service, tmp_path, etcd_overrides={"endpoints": [small_etcd.url]})
    prefix = f"/adv-sign-url-{tmp_path.name}/"
    older, newer = two_backups_then_swap(service, small_etcd, prefix)
    with served_over_http(service) as url:
        verify = etcd_backup("verify", f"{url}/api/v1/backup/{newer}")
        data_dir = tmp_path / "restored"
        done = etcd_backup("restore", f"{url}/api/v1/backup/{newer}", "--data-dir", str(data_dir), timeout=120)
    state = restored(data_dir, prefix) if done.returncode == 0 else {}
    # Before the fix: both exited 0 ("good: revision ..., 20480 bytes": the older backup's database), and the data
    # dir held k=old under the newer backup's name.
    assert done.returncode == 1, f"restored {newer} holding k={state.get((prefix + 'k').encode())!r}"
    assert verify.returncode == 1, verify.stdout


# --- 2. names taken ahead of the next backup -----------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "what"), [("local", "empty"), ("local", "symlink"), ("local", "one-byte"),
                                               ("seaweedfs", "empty")])
def test_names_planted_ahead_of_the_next_backup_do_not_stop_it(
        backend: str, what: str, make_service: Callable[..., Service], seaweedfs: S3Server, tmp_path: Path) -> None:
    """Names held by what the store does not list (an empty file or object, a symlink, what is not ours): the next
    backup is named past them, up to FUTURE_TOLERANCE / 2 ahead; beyond, it fails saying why (before the fix: 500
    'already exists' at the first of them)."""
    extra = seaweedfs.settings(*seaweedfs.place()) if backend == "seaweedfs" else {}
    service = signed(make_service, tmp_path, **extra)
    now = datetime.now(UTC).replace(microsecond=0)

    def plant(seconds: range) -> list[str]:
        names = [backups.backup_name(now + timedelta(seconds=second)) for second in seconds]
        for name in names:
            if what == "symlink":
                (service.config.backup_dir / name).symlink_to("/dev/null")
            else:
                service.plant(name, b"" if what == "empty" else b"x")
        return names

    planted = plant(range(-2, 20))
    answer = service.client.post("/api/v1/backup")
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["filename"] not in planted
    assert service.client.get("/api/v1/backup").get_json() == [answer.get_json()["filename"]]
    plant(range(21, 120))  # past the backup just taken, named +20
    refused = service.client.post("/api/v1/backup")
    assert refused.status_code == 500 and "are all taken" in refused.get_json()["message"], refused.get_json()


# --- 3. deltas deleted around a moment -----------------------------------------------------------------------------


def three_bursts(service: Service, etcd: EtcdServer, redis_conn: redis.Redis, prefix: str) -> tuple[
        int, int, datetime, int]:
    """A full backup, then with the watcher on: burst A (k=a), 2 s later burst B (k=b, the incident's fix), a
    moment T 1.5 s after it, and 1.5 s after T burst C. Returns A's and B's last revisions, T, and C's last."""
    client = etcd.client()
    client.put(prefix + "k", "before")
    service.client.post("/api/v1/backup")
    with watcher(service.config, redis_conn):
        for value in ("a1", "a2", "a"):
            client.put(prefix + "k", value)
        end_a = current_revision(etcd.url)
        wait_stored(redis_conn, end_a)
        time.sleep(2.2)
        for value in ("b1", "b2", "b"):
            client.put(prefix + "k", value)
        end_b = current_revision(etcd.url)
        wait_stored(redis_conn, end_b)
        time.sleep(1.5)
        moment = datetime.now(UTC)
        time.sleep(1.5)
        client.put(prefix + "k", "c")
        end_c = current_revision(etcd.url)
        wait_stored(redis_conn, end_c)
    return end_a, end_b, moment, end_c


@pytest.mark.slow
def test_deltas_deleted_just_before_a_moment_refuse_a_restore_to_it(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path) -> None:
    service = signed(make_service, tmp_path, delta_period="200ms")
    prefix = f"/adv-sign-hole-{tmp_path.name}/"
    end_a, end_b, moment, end_c = three_bursts(service, etcd, redis_conn, prefix)
    store = service.store
    assert plan_restore(store, Target(time=moment), datetime.now(UTC), []).revision == end_b  # before the attack
    hole = [name for name in store.list_deltas() if (said := parse_delta_name(name)) is not None
            and said.last > end_a and said.first <= end_b]
    assert hole and max(parse_delta_name(name).last for name in hole) == end_b  # type: ignore[union-attr]
    for name in hole:
        assert service.backend.delete_delta(name)
    data_dir = tmp_path / "restored"
    done = etcd_backup("restore", "--config", str(tmp_path / "config.yml"), "--to-time", moment.isoformat(),
                       "--data-dir", str(data_dir), timeout=120)
    state = restored(data_dir, prefix) if done.returncode == 0 else {}
    # Before the fix: exit 0, "restoring to revision <end_a>", k=a (k=b, received 1.5 s before T, was not there).
    assert done.returncode == 1 and "no delta holds revisions" in done.stderr, (
        f"exit {done.returncode} at T={moment.isoformat()}: {done.stdout} {done.stderr}; k="
        f"{state.get((prefix + 'k').encode())!r}, etcd held b then (revision {end_b}; the delta after the hole "
        f"holds {end_b + 1}..{end_c})")


# --- 4. thousands of planted names: what each listing costs --------------------------------------------------------


def timed(call: Callable[[], Any], rounds: int = 3) -> float:
    """The best of `rounds` wall-clock times of `call()`, in seconds."""
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - began)
    return best


@pytest.mark.slow
def test_thousands_of_forged_backups_cost_each_listing_little(
        make_service: Callable[..., Service], tmp_path: Path, report: Report) -> None:
    service = signed(make_service, tmp_path)
    real = service.client.post("/api/v1/backup").get_json()["filename"]
    genuine = json.loads(service.peek(backups.metadata_name(real)) or b"")
    baseline = timed(lambda: service.client.get("/api/v1/backup").get_json())
    # 3,000 backups an hour back, each a 1-byte archive and metadata that parses, with a well-formed signature of the
    # genuine one's (so each is verified, and fails, on every listing: good signatures alone are remembered).
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    count = 3000
    directory = service.config.backup_dir
    for second in range(count):
        when = start + timedelta(seconds=second)
        name = backups.backup_name(when)
        (directory / backups.metadata_name(name)).write_text(json.dumps(
            {**genuine, "filename": name, "filesize": 1, "started": when.isoformat()}))
        (directory / name).write_bytes(b"x")
    listing = timed(lambda: service.client.get("/api/v1/backup").get_json())
    detail = timed(lambda: service.client.get("/api/v1/backup?detail=true").get_json())
    status = timed(lambda: service.client.get("/api/v1/status").get_json(), rounds=1)
    assert service.client.get("/api/v1/backup").get_json() == [real]
    assert service.client.get("/api/v1/status").get_json()["backups"]["not_ours"] == count
    print(f"listing: {baseline * 1000:.1f} ms alone, {listing * 1000:.0f} ms with {count} forged; detail "
          f"{detail * 1000:.0f} ms; status {status * 1000:.0f} ms")
    # Each listing reads and verifies every planted file again: linear in what is planted, never a hang.
    assert listing < 5.0 and status < 10.0
    report(f"with signing: {count} forged backups planted (1-byte archive, metadata that parses, a well-formed "
           "signature that fails)",
           f"GET /api/v1/backup {baseline * 1000:.1f} ms -> {listing * 1000:.0f} ms (each listing reads and "
           f"re-verifies all {count}: failures are not remembered), ?detail=true {detail * 1000:.0f} ms, "
           f"/api/v1/status {status * 1000:.0f} ms (the store read twice), not_ours = {count}; only the real "
           "backup listed")


# --- 5. symlinks, hard links, mixed pairs, hostile metadata files (local backup-dir) ------------------------------


def test_symlinks_links_mixed_pairs_and_hostile_metadata_are_never_listed(
        make_service: Callable[..., Service], etcd: EtcdServer, tmp_path: Path, report: Report) -> None:
    service = signed(make_service, tmp_path)
    etcd.client().put(f"/adv-sign-links-{tmp_path.name}/k", "v")
    older = service.client.post("/api/v1/backup").get_json()["filename"]
    newer = service.client.post("/api/v1/backup").get_json()["filename"]
    directory = service.config.backup_dir
    newest_time = backups.backup_time(newer)
    assert newest_time is not None
    later = [backups.backup_name(newest_time + timedelta(seconds=second)) for second in range(2, 8)]
    # a. A later name whose archive and metadata are symlinks to the newest's.
    (directory / later[0]).symlink_to(directory / newer)
    (directory / backups.metadata_name(later[0])).symlink_to(directory / backups.metadata_name(newer))
    # b. A later name whose archive is a hard link to the newest's, its metadata a copy with only the name changed.
    os.link(directory / newer, directory / later[1])
    (directory / backups.metadata_name(later[1])).write_text(json.dumps(
        {**json.loads((directory / backups.metadata_name(newer)).read_text()), "filename": later[1]}))
    # c. Hostile metadata under later names (each with a 1-byte archive): nested 30,000 deep; one byte over the
    #    64 KiB limit; a revision of 60,000 digits; a revision of 1e400; a drill nested 900 deep (parses).
    genuine = json.loads((directory / backups.metadata_name(newer)).read_text())
    hostile = {
        later[2]: b"[" * 30000 + b"]" * 30000,
        later[3]: json.dumps({**genuine, "filename": later[3], "endpoint": "x" * (64 << 10)}).encode(),
        later[4]: json.dumps({**genuine, "filename": later[4]}).encode().replace(
            f'"revision": {genuine["revision"]}'.encode(), b'"revision": ' + b"9" * 60000, 1),
        later[5]: json.dumps({**genuine, "filename": later[5], "drill": {}}).encode().replace(
            b'"drill": {}', b'"drill": ' + b'{"a": ' * 900 + b"1" + b"}" * 900, 1),
    }
    for name, raw in hostile.items():
        (directory / backups.metadata_name(name)).write_bytes(raw)
        (directory / name).write_bytes(b"x")
    # d. The newest's own archive replaced by a symlink to the older one's (its metadata kept).
    (directory / newer).rename(directory / "moved-away")
    (directory / newer).symlink_to(directory / older)

    began = time.perf_counter()
    listed = service.client.get("/api/v1/backup").get_json()
    detail = service.client.get("/api/v1/backup?detail=true")
    seconds = time.perf_counter() - began
    assert listed == [older], listed
    assert detail.status_code == 200 and [entry["filename"] for entry in detail.get_json()] == [older]
    for name in [newer, *later]:
        assert service.client.get(f"/api/v1/backup/{name}").status_code == 404, name
        assert service.client.post(f"/api/v1/backup/{name}/verify").status_code == 404, name
    assert service.client.get("/api/v1/status").status_code == 200
    report("with signing, in backup-dir: a later name of symlinks to the newest's archive and metadata; a hard link "
           "of the newest's archive with its metadata copied under the later name; metadata nested 30,000 deep, 64 "
           "KiB + 1, a 60,000-digit revision, a drill nested 900 deep; the newest's archive replaced by a symlink to "
           "the older one's",
           f"only the older backup is listed ({seconds * 1000:.0f} ms for both listings); every other name 404 on "
           "download and on POST .../verify; the status answers 200")


@pytest.mark.slow
def test_a_genuine_backup_replayed_under_its_own_name_after_retention_is_never_the_newest_and_goes_again(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    service = signed(make_service, tmp_path, rotate=2)
    etcd.client().put(f"/adv-sign-replay-{tmp_path.name}/k", "v")
    first = service.client.post("/api/v1/backup").get_json()["filename"]
    kept = {name: service.peek(name) for name in (first, backups.metadata_name(first))}
    names = [service.client.post("/api/v1/backup").get_json()["filename"] for _ in range(2)]
    assert service.client.get("/api/v1/backup").get_json() == names  # rotate 2 removed the first
    for name, data in kept.items():
        service.plant(name, data or b"")
    # It is ours, signed, under its own name and time: listed again, in its place; never latest, never drilled.
    assert service.client.get("/api/v1/backup").get_json() == [first, *names]
    assert run_drill(service.config, redis_conn).backup == names[-1]
    newest = service.client.post("/api/v1/backup").get_json()["filename"]
    assert service.client.get("/api/v1/backup").get_json() == [names[-1], newest]
    report("with signing, rotate 2: the oldest backup (archive and signed metadata) saved, removed by rotation, then "
           "put back under its own name",
           "it is listed again in its own place (it is ours, of its own time), never the newest: the drill took the "
           "newest; the next backup's rotation removed it again with the other surplus")


# --- 6. deltas: genuine bytes under another genuine signed name ----------------------------------------------------


@pytest.mark.slow
def test_genuine_delta_bytes_swapped_between_signed_names_are_refused(
        make_service: Callable[..., Service], etcd: EtcdServer, redis_conn: redis.Redis, tmp_path: Path,
        report: Report) -> None:
    service = signed(make_service, tmp_path, delta_period="200ms")
    prefix = f"/adv-sign-dswap-{tmp_path.name}/"
    end_a, end_b, moment, end_c = three_bursts(service, etcd, redis_conn, prefix)
    store, backend = service.store, service.backend
    names = store.list_deltas()
    first, last = names[0], names[-1]
    data = {name: backend.read_delta(name) or b"" for name in (first, last)}
    assert decode_delta(first, data[first]).revisions[0].number == parse_delta_name(first).first  # type: ignore[union-attr]
    for name, other in ((first, last), (last, first)):  # each genuine delta's bytes under the other's signed name
        backend.delete_delta(name)
        backend.put_delta(name, data[other])
    with pytest.raises(RestoreError, match="not the ones its signed name names"):
        plan_restore(store, Target(revision=end_c), datetime.now(UTC), [])
    with pytest.raises(RestoreError, match="not the ones its signed name names"):
        plan_restore(store, Target(time=moment), datetime.now(UTC), [])
    for name in (first, last):  # put back: the chain is whole again
        backend.delete_delta(name)
        backend.put_delta(name, data[name])
    assert plan_restore(store, Target(time=moment), datetime.now(UTC), []).revision == end_b
    report("with signing: the first and last deltas' bytes swapped, each under the other's signed name (genuine "
           "bytes of another range)",
           "planning --to-revision and --to-time refuses: 'its bytes are not the ones its signed name names'; "
           f"put back, --to-time plans to revision {end_b} again")


# --- 7. the API holds only the verify key --------------------------------------------------------------------------


def test_an_api_with_only_the_verify_key_lists_serves_and_queues_without_the_private_key(
        make_service: Callable[..., Service], etcd: EtcdServer, tmp_path: Path, report: Report) -> None:
    section = signing(tmp_path)
    worker = make_service(signing=section)  # the worker: key-file and verify-key
    api = make_service(worker=False, signing={"verify-key": section["verify-key"]})  # the API: the verify key only
    assert api.config.signing is not None and api.config.signing.key_file is None
    etcd.client().put(f"/adv-sign-api-{tmp_path.name}/k", "v")
    taken = api.client.post("/api/v1/backup")
    assert taken.status_code == 200, taken.get_json()
    name = taken.get_json()["filename"]
    assert api.client.get("/api/v1/backup").get_json() == [name]
    download = api.client.get(f"/api/v1/backup/{name}")
    assert download.status_code == 200 and download.headers["X-Backup-Sha256"]
    download.close()
    assert api.client.post(f"/api/v1/backup/{name}/verify").status_code == 200
    status = api.client.get("/api/v1/status").get_json()
    assert status["backups"]["signed_by"] == api.config.signing.verify_key.fingerprint
    assert worker.client.get("/api/v1/backup").get_json() == [name]
    report("the API's config holds only signing.verify-key (no key-file); a worker's holds both",
           "the API queues a backup, lists it, serves it with its SHA-256, queues its verify and shows the status "
           "(signed_by the key's fingerprint): it never needs the private key")
