"""The storage contract, against the local directory and two real S3 servers alike (SeaweedFS and moto, on
loopback), and the service end to end with its backups in a bucket."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from common.backups import backup_name, backup_time
from common.config import parse_config
from common.metadata import BackupMetadata
from common.storage import BackupStore, LocalStore, StorageError, open_store
from common.storage.s3 import S3Store
from harness.deployment import Deployment
from harness.files import write_config
from harness.in_process import Service
from harness.processes import BIN_DIR
from harness.report import Report
from harness.s3 import S3Server, SeaweedServer
from harness.servers import EtcdServer, RedisServer

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ARCHIVE = os.urandom(3 << 20)  # over moto's part minimum is not needed: one part may be small


class Backend:
    """A store of one kind, with the means to plant objects in it behind its back (as a hostile writer could)."""

    def __init__(self, store: BackupStore, plant: Callable[[str, bytes], None], server: S3Server | None = None,
                 bucket: str = "", prefix: str = "") -> None:
        self.store, self.plant, self.server, self.bucket, self.prefix = store, plant, server, bucket, prefix

    def uploads(self) -> list[str]:
        if self.server is None:
            assert isinstance(self.store, LocalStore)
            return [name for name in os.listdir(self.store.directory) if name.startswith(".")]
        answer = self.server.client().list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        return [upload["Key"] for upload in answer.get("Uploads", [])]


@pytest.fixture(params=["local", "seaweedfs", "moto"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "local":
        store = LocalStore(tmp_path / "backups")
        store.prepare()
        return Backend(store, lambda name, data: (store.directory / name).write_bytes(data))
    server: S3Server = request.getfixturevalue(request.param)
    bucket, prefix = server.place()
    store = open_store(parse_config({"etcd": {}, **server.settings(bucket, prefix)}, {}))
    store.prepare()
    client = server.client()
    return Backend(store, lambda name, data: client.put_object(Bucket=bucket, Key=prefix + name, Body=data),
                   server, bucket, prefix)


def metadata_of(name: str, archive: bytes) -> BackupMetadata:
    return BackupMetadata(
        filename=name, filesize=len(archive), archive_sha256=hashlib.sha256(archive).hexdigest(), cluster_id="1",
        member_id="2", endpoint="http://127.0.0.1:2379", revision=7, etcd_version="3.4.23", db_size=1,
        db_sha256="0" * 64, started=backup_time(name).isoformat(), duration=0.5)  # type: ignore[union-attr]


def publish(store: BackupStore, name: str, archive: bytes = ARCHIVE) -> None:
    with store.new_backup(name, "job-1") as pending:
        for start in range(0, len(archive), 1 << 16):  # as the archive writer does: many small writes
            pending.write(archive[start:start + (1 << 16)])
        pending.publish(metadata_of(name, archive))


def test_a_published_backup_is_listed_stated_opened_and_has_its_metadata(backend: Backend) -> None:
    store = backend.store
    names = [backup_name(NOW - timedelta(hours=hours)) for hours in (1, 3, 2)]
    for name in names:
        publish(store, name)
    assert store.list_backups() == sorted(names)
    assert store.list_backups(NOW) == sorted(names)
    stored = store.stat(names[0])
    assert stored is not None and stored.size == len(ARCHIVE) and stored.etag
    opened = store.open(names[0])
    assert opened is not None
    with opened.file as file:
        assert hashlib.sha256(file.read()).digest() == hashlib.sha256(ARCHIVE).digest()
        file.seek(1000)
        assert file.read(10) == ARCHIVE[1000:1010]
        file.seek(len(ARCHIVE) - 5)
        assert file.read() == ARCHIVE[-5:]
    assert store.read_metadata(names[0]) == metadata_of(names[0], ARCHIVE)
    assert backend.uploads() == []


def test_the_catalog_is_the_listing_with_each_backup_s_facts_and_current_metadata(backend: Backend) -> None:
    store = backend.store
    with_metadata, without, not_ours = (backup_name(NOW - timedelta(hours=hours)) for hours in (3, 2, 1))
    publish(store, with_metadata)
    backend.plant(without, b"taken by hand: no metadata")
    backend.plant(not_ours, b"an archive")
    backend.plant(not_ours + ".json", b'{"filename": "something else"}')
    first = store.catalog(NOW)
    assert [entry.name for entry in first] == store.list_backups(NOW) == [with_metadata, without, not_ours]
    assert [entry.stored.size for entry in first] == [len(ARCHIVE), 26, 10]
    assert [entry.stored.etag for entry in first] == [store.stat(entry.name).etag for entry in first]  # type: ignore[union-attr]
    assert [entry.metadata for entry in first] == [metadata_of(with_metadata, ARCHIVE), None, None]

    # A drill records its result: the next catalog shows it, whatever it read before.
    drilled = replace(metadata_of(with_metadata, ARCHIVE), duration=9.25)
    store.update_metadata(drilled)
    assert store.catalog(NOW)[0].metadata == drilled
    # Metadata planted over a backup's is checked as any read is: not ours, not shown.
    backend.plant(with_metadata + ".json", b"[]")
    assert store.catalog(NOW)[0].metadata is None
    store.delete(with_metadata)
    assert [entry.name for entry in store.catalog(NOW)] == [without, not_ours]


def test_a_catalog_reads_only_the_metadata_that_changed(s3_backend: Backend) -> None:
    store = s3_backend.store
    assert isinstance(store, S3Store)
    names = [backup_name(NOW - timedelta(hours=hours)) for hours in range(5, 0, -1)]
    for name in names:
        publish(store, name, b"a small archive")
    reads: list[str] = []
    store.client.meta.events.register("before-parameter-build.s3.GetObject",
                                      lambda params, **_: reads.append(params["Key"]))
    assert [entry.metadata for entry in store.catalog(NOW)] == [metadata_of(name, b"a small archive")
                                                                for name in names]
    assert sorted(reads) == sorted(store.key(name + ".json") for name in names)
    reads.clear()
    store.catalog(NOW)
    assert reads == []  # nothing changed: one listing, no GET
    store.update_metadata(replace(metadata_of(names[2], b"a small archive"), duration=3.5))
    assert store.catalog(NOW)[2].metadata.duration == 3.5  # type: ignore[union-attr]
    assert reads == [store.key(names[2] + ".json")]


def test_only_backups_are_listed(backend: Backend) -> None:
    real = backup_name(NOW)
    publish(backend.store, real)
    backend.plant("notes.txt", b"an operator's notes")
    backend.plant(backup_name(NOW - timedelta(hours=1)), b"")  # empty: no backup is
    backend.plant("snapshot-20261301_000000.tar.gz", b"month 13")
    if backend.server is not None:  # a key one level down, and a "directory" named like a backup
        backend.plant(f"deeper/{backup_name(NOW - timedelta(hours=2))}", b"x")
        backend.plant(f"{backup_name(NOW - timedelta(hours=3))}/", b"")
    assert backend.store.list_backups() == [real]
    assert backend.store.stat(backup_name(NOW - timedelta(hours=1))) is None
    assert backend.store.open("notes.txt") is None


def test_a_taken_name_is_never_overwritten(backend: Backend, report: Report) -> None:
    name = backup_name(NOW)
    publish(backend.store, name, b"the older backup")
    with pytest.raises(StorageError, match="already exists"):
        publish(backend.store, name)
    opened = backend.store.open(name)
    assert opened is not None
    with opened.file as file:
        assert file.read() == b"the older backup"
    assert backend.uploads() == []
    report(f"a new backup under a taken name, {type(backend.store).__name__}"
           f"{'' if backend.server is None else ' on ' + backend.server.name}",
           "StorageError \"already exists\"; the older backup byte for byte; no upload left")


def test_a_failed_write_leaves_nothing(backend: Backend) -> None:
    name = backup_name(NOW)
    with pytest.raises(RuntimeError, match="the stream broke"), backend.store.new_backup(name, "job-1") as pending:
        pending.write(ARCHIVE)
        raise RuntimeError("the stream broke")
    assert backend.store.list_backups() == []
    assert backend.store.stat(name) is None and backend.store.read_metadata(name) is None
    assert backend.uploads() == []


def test_delete_and_orphan_metadata(backend: Backend) -> None:
    kept, deleted = backup_name(NOW), backup_name(NOW - timedelta(hours=1))
    publish(backend.store, kept)
    publish(backend.store, deleted)
    assert backend.store.delete(deleted) and not backend.store.delete(deleted)
    assert not backend.store.delete("notes.txt")
    assert backend.store.list_backups() == [kept] and backend.store.read_metadata(deleted) is None
    orphan = backup_name(NOW - timedelta(hours=2))
    backend.plant(orphan + ".json", metadata_of(orphan, b"x").to_bytes())
    assert backend.store.remove_orphan_metadata() == [orphan + ".json"]
    assert backend.store.read_metadata(kept) is not None


@pytest.mark.parametrize("server_name", ["seaweedfs", "moto"])
def test_dead_uploads_are_aborted_and_a_live_one_kept(request: pytest.FixtureRequest, server_name: str) -> None:
    server: S3Server = request.getfixturevalue(server_name)
    bucket, prefix = server.place()
    store = open_store(parse_config({"etcd": {}, **server.settings(bucket, prefix)}, {}))
    client = server.client()
    client.create_multipart_upload(Bucket=bucket, Key=prefix + backup_name(NOW))
    client.create_multipart_upload(Bucket=bucket, Key=prefix + "not-ours.bin")
    assert store.remove_unpublished(lambda: "a-live-job") == []  # it may be the live backup's
    assert store.remove_unpublished(lambda: None) == [prefix + backup_name(NOW)]
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
    assert [upload["Key"] for upload in uploads] == [prefix + "not-ours.bin"]


def test_wrong_credentials_and_a_missing_bucket_are_one_line_at_start_up(
        seaweedfs: S3Server, tmp_path: Path, etcd: EtcdServer, report: Report) -> None:
    import subprocess

    bucket, prefix = seaweedfs.place()
    good = seaweedfs.settings(bucket, prefix)
    lines = {}
    for case, settings in {
        "wrong secret": {**good, "s3": {**good["s3"], "secret-access-key": "not-the-secret"}},
        "missing bucket": seaweedfs.settings("no-such-bucket", prefix),
    }.items():
        path = write_config(tmp_path / f"{case.replace(' ', '-')}.yml", {"etcd": {"endpoints": [etcd.url]}, **settings})
        result = subprocess.run([str(BIN_DIR / "etcd-backup"), "config", "check", "--config", str(path)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result
        assert len(result.stderr.strip().splitlines()) == 1 and "backup-dir: cannot reach" in result.stderr
        assert "not-the-secret" not in result.stderr + result.stdout
        lines[case] = result.stderr.strip()
    report("S3 with a wrong secret key, and a bucket that does not exist (SeaweedFS)",
           "; ".join(f"{case}: exit 2, {line!r}" for case, line in lines.items()))


def test_the_service_on_a_bucket(s3_service: Callable[..., Service], report: Report) -> None:
    service = s3_service(rotate=2)
    taken = []
    for _ in range(3):
        answer = service.client.post("/api/v1/backup")
        assert answer.status_code == 200, answer.get_json()
        taken.append(answer.get_json()["filename"])
    listed = service.client.get("/api/v1/backup").get_json()
    assert listed == taken[1:]  # rotate 2
    name = listed[-1]
    store = open_store(service.config)
    assert isinstance(store, S3Store)
    opened = store.open(name)
    assert opened is not None
    with opened.file as file:
        whole = file.read()
    download = service.client.get(f"/api/v1/backup/{name}")
    assert download.status_code == 200 and download.data == whole
    assert download.headers["X-Backup-Sha256"] == hashlib.sha256(whole).hexdigest()
    ranged = service.client.get(f"/api/v1/backup/{name}", headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.data == whole[10:20]
    head = service.client.head(f"/api/v1/backup/{name}")
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(whole)
    again = service.client.get(f"/api/v1/backup/{name}", headers={"If-None-Match": download.headers["ETag"]})
    assert again.status_code == 304
    detail = service.client.get("/api/v1/backup?detail=true").get_json()
    assert [entry["filename"] for entry in detail] == listed and detail[-1]["filesize"] == len(whole)
    verified = service.client.post(f"/api/v1/backup/{name}/verify")
    assert verified.status_code == 200, verified.get_json()
    ready = service.client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"]["backup-dir"]["ok"]
    report("the service with backup-dir s3://BUCKET/backups/ on SeaweedFS (rotate 2, 3 POSTs)",
           f"3 x POST 200; listed the newest 2; download equals the object ({len(whole)} bytes, SHA-256 header "
           "matches), Range 206, HEAD, ETag 304, ?detail=true, verify 200, /readyz ok")


def test_a_stopped_s3_is_a_500_naming_the_endpoint(make_service: Callable[..., Service], tmp_path: Path,
                                                   report: Report) -> None:
    server = SeaweedServer(tmp_path / "short-lived").start()
    service = make_service(**server.settings(*server.place()))
    server.stop()
    answer = service.client.post("/api/v1/backup")
    message = answer.get_json()["message"]
    assert answer.status_code == 500 and server.endpoint in message
    assert "etcd-backup-test-secret-key" not in json.dumps(answer.get_json())
    ready = service.client.get("/readyz")
    assert ready.status_code == 503 and not ready.get_json()["checks"]["backup-dir"]["ok"]
    listed = service.client.get("/api/v1/backup")
    assert listed.status_code == 500 and server.endpoint in listed.get_json()["message"]
    report("S3 (SeaweedFS) stopped before a POST", f"POST 500 {message!r}; /readyz 503 naming backup-dir; "
           f"GET list 500 {listed.get_json()['message']!r}")


@pytest.mark.slow
def test_two_workers_and_an_api_that_share_only_redis_and_the_bucket(
        seaweedfs: S3Server, etcd: EtcdServer, redis_server: RedisServer, tmp_path: Path, report: Report) -> None:
    deployment = Deployment(tmp_path / "hosts", [etcd.url], redis_server, **seaweedfs.settings(*seaweedfs.place()))
    deployment.start(workers=2)
    try:
        names = [deployment.post_backup()["filename"] for _ in range(3)]
        status, _, body = deployment.request("GET", "/api/v1/backup")
    finally:
        deployment.stop()
    assert status == 200 and json.loads(body) == names
    assert not deployment.backup_dir.exists() or os.listdir(deployment.backup_dir) == []
    report("the Procfile deployment (web + 2 workers) with backup-dir on SeaweedFS", f"3 POSTs 200, listed {names}; "
           "nothing written to a local backup-dir")


@pytest.mark.slow
def test_s3_gone_while_a_backup_completes_leaves_nothing_after_the_next_start(
        make_service: Callable[..., Service], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        redis_conn: Any, report: Report) -> None:
    """SeaweedFS is stopped (a real kill of the store) between the parts' upload and the completing call:
    the POST fails naming the endpoint; once it is back, no backup is listed, and the next worker start
    leaves no upload (and the next backup no orphan metadata)."""
    from worker.runner import prepare

    server = SeaweedServer(tmp_path / "dies").start()
    bucket, prefix = server.place()
    service = make_service(**server.settings(bucket, prefix))
    real_complete = S3Store.complete

    def die_then_complete(store: S3Store, *args: Any) -> None:
        server.stop()
        real_complete(store, *args)

    monkeypatch.setattr(S3Store, "complete", die_then_complete)
    try:
        answer = service.client.post("/api/v1/backup")
        monkeypatch.setattr(S3Store, "complete", real_complete)
        message = answer.get_json()["message"]
        assert answer.status_code == 500 and server.endpoint in message, message
        server.start()
        client = server.client()
        left = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
        assert service.client.get("/api/v1/backup").get_json() == []
        prepare(service.config, redis_conn)  # a worker starts: no backup is live
        assert client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []) == []
        taken = service.client.post("/api/v1/backup")
        assert taken.status_code == 200, taken.get_json()
        keys = sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
        name = taken.get_json()["filename"]
        assert keys == [prefix + name, prefix + name + ".json"]
    finally:
        server.stop()
    report("SeaweedFS killed after a backup's parts were sent, before the upload was completed",
           f"POST 500 {message!r}; after a restart no backup listed; {len(left)} upload left, aborted by the next "
           "worker start; the next backup 200 and nothing else under the prefix (the orphan metadata removed)")


@pytest.mark.parametrize("server_name", ["seaweedfs", "moto"])
def test_presigned_downloads_redirect_to_the_object(make_service: Callable[..., Service],
                                                    request: pytest.FixtureRequest, server_name: str) -> None:
    import urllib.request

    server: S3Server = request.getfixturevalue(server_name)
    settings = server.settings(*server.place())
    service = make_service(**{**settings, "s3": {**settings["s3"], "presign-downloads": True}})
    name = service.client.post("/api/v1/backup").get_json()["filename"]
    answer = service.client.get(f"/api/v1/backup/{name}")
    assert answer.status_code == 302 and "no-store" in answer.headers["Cache-Control"]
    location = answer.headers["Location"]
    assert "Signature" in location and "etcd-backup-test-secret-key" not in location
    with urllib.request.urlopen(location, timeout=10) as fetched:
        body = fetched.read()
        disposition = fetched.headers["Content-Disposition"]
    assert disposition == "attachment" and urlsplit(location).path.endswith(f"/{name}")  # saved, under its name
    assert hashlib.sha256(body).hexdigest() == service.client.get(
        "/api/v1/backup?detail=true").get_json()[0]["archive_sha256"]
    assert service.client.get("/api/v1/backup/snapshot-20200101_000000.tar.gz").status_code == 404


def test_each_process_gets_its_own_s3_client(moto: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn's master checks the bucket, then forks: a worker must not reuse the master's client (and its
    open connections, which two processes would then share)."""
    config = parse_config({"etcd": {}, **moto.settings(*moto.place())}, {})
    first = open_store(config)
    assert open_store(config) is first  # one per process: a client takes tens of ms to make
    monkeypatch.setattr(os, "getpid", lambda: -1)  # as in a forked child
    assert open_store(config) is not first


@pytest.fixture(params=["seaweedfs", "moto"])
def s3_backend(request: pytest.FixtureRequest) -> Backend:
    server: S3Server = request.getfixturevalue(request.param)
    bucket, prefix = server.place()
    store = open_store(parse_config({"etcd": {}, **server.settings(bucket, prefix)}, {}))
    client = server.client()
    return Backend(store, lambda name, data: client.put_object(Bucket=bucket, Key=prefix + name, Body=data),
                   server, bucket, prefix)


def test_the_store_refuses_a_complete_that_would_replace_a_backup(
        s3_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """If-None-Match: * on CompleteMultipartUpload, for a name taken between the check and the complete (the
    check is made to see the name free). The first backup stays, and the second's metadata goes again."""
    name = backup_name(NOW)
    publish(s3_backend.store, name, b"the first backup")
    assert s3_backend.server is not None
    client = s3_backend.server.client()
    client.delete_object(Bucket=s3_backend.bucket, Key=s3_backend.prefix + name + ".json")
    monkeypatch.setattr(S3Store, "exists", lambda store, key_name: False)
    with pytest.raises(StorageError, match="already exists"):
        publish(s3_backend.store, name, b"a second backup of the same name")
    monkeypatch.undo()
    opened = s3_backend.store.open(name)
    assert opened is not None
    with opened.file as file:
        assert file.read() == b"the first backup"
    listed = client.list_objects_v2(Bucket=s3_backend.bucket, Prefix=s3_backend.prefix).get("Contents", [])
    assert [item["Key"] for item in listed] == [s3_backend.prefix + name]
    assert s3_backend.uploads() == []


def test_an_object_replaced_while_it_is_read_fails_the_read(s3_backend: Backend) -> None:
    name = backup_name(NOW)
    data = os.urandom(3 << 20)
    publish(s3_backend.store, name, data)
    opened = s3_backend.store.open(name)
    assert opened is not None and s3_backend.server is not None
    with opened.file as file:
        assert file.read(3) == data[:3]
        s3_backend.server.client().put_object(Bucket=s3_backend.bucket, Key=s3_backend.prefix + name,
                                              Body=b"something else entirely")
        file.seek(2 << 20)  # beyond what was read ahead: a new GET, If-Match the old ETag
        with pytest.raises(OSError, match="PreconditionFailed|412"):
            file.read()


def test_part_sizes_grow_so_that_10000_parts_are_never_needed() -> None:
    from common.storage.s3 import part_size

    mib = 1 << 20
    assert [part_size(5 * mib, n) for n in (1, 1000, 1001, 2001)] == [5 * mib, 5 * mib, 10 * mib, 20 * mib]
    assert sum(part_size(5 * mib, n) for n in range(1, 2001)) > 8 << 30  # etcd's largest database, 8 GiB
    assert part_size(16 * mib, 10_000) == 5 << 30  # S3's largest part


def test_a_cleanup_the_store_refuses_is_logged_and_left_for_the_next(
        moto: S3Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An abort or a delete refused while a backup starts must not fail that backup."""
    from botocore.exceptions import ClientError

    bucket, prefix = moto.place()
    store = open_store(parse_config({"etcd": {}, **moto.settings(bucket, prefix)}, {}))
    assert isinstance(store, S3Store)
    client = moto.client()
    client.create_multipart_upload(Bucket=bucket, Key=prefix + backup_name(NOW))
    orphan = backup_name(NOW - timedelta(hours=1)) + ".json"
    client.put_object(Bucket=bucket, Key=prefix + orphan, Body=b"{}")

    def refused(**_: object) -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "refused (test)"}}, "Abort")

    monkeypatch.setattr(store.client, "abort_multipart_upload", refused)
    monkeypatch.setattr(store.client, "delete_object", refused)
    assert store.remove_unpublished(lambda: None) == [] and store.remove_orphan_metadata() == []
    assert "cannot abort the upload" in caplog.text and f"cannot remove {orphan}" in caplog.text
    monkeypatch.undo()
    assert store.remove_unpublished(lambda: None) == [prefix + backup_name(NOW)]
    assert store.remove_orphan_metadata() == [orphan]
